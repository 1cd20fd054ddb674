# flowella_apikey: API keys for Flowella organisations, in PostgreSQL.

MODULE_big = flowella_apikey
OBJS = \
	$(WIN32RES) \
	flowella_apikey.o \
	flowella_audit.o \
	flowella_bucket.o \
	flowella_check.o \
	flowella_forward.o \
	flowella_manage.o \
	flowella_ratelimit.o \
	flowella_redact.o \
	flowella_scopes.o \
	flowella_token.o \
	flowella_usage.o \
	flowella_verify.o

EXTENSION = flowella_apikey
# One install script, then one upgrade script per version: CREATE EXTENSION
# runs 1.0 and the updates up to the version asked for (see the README).
DATA = flowella_apikey--1.0.sql flowella_apikey--1.0--1.1.sql \
	flowella_apikey--1.1--1.2.sql flowella_apikey--1.2--1.3.sql \
	flowella_apikey--1.3--1.4.sql flowella_apikey--1.4--1.5.sql
PGFILEDESC = "flowella_apikey - API keys for Flowella organisations"

SHLIB_LINK += -lsodium
# A hot standby's usage worker talks to the primary with libpq, linked the
# way contrib/dblink and postgres_fdw link it.
PG_CPPFLAGS += -I$(libpq_srcdir)
SHLIB_LINK_INTERNAL += $(libpq)

# installcheck runs against a server started with
# shared_preload_libraries = flowella_apikey, as production runs it (see the
# README: scripts/test.sh wraps it in pg_virtualenv).  setup runs first and
# creates the extension, test roles and plans the other files use.
REGRESS = setup tokens create verify hostile actor provisioning revoke scopes replace list \
	security immutability audit audit_chain verify_cache usage usage_history usage_submit policy rotation
ISOLATION = revoke_verify concurrent_create last_owner chain_concurrency

PG_CFLAGS += -Wall -Wextra -Wno-unused-parameter -Wno-missing-field-initializers

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# Run the regression suite once against a server under valgrind memcheck
# (slow; not part of scripts/test.sh).  See the README.
.PHONY: valgrind
valgrind:
	bash $(srcdir)/scripts/valgrind.sh

# Build the Debian package postgresql-15-flowella-apikey into build/deb/
# (dpkg-buildpackage -us -uc -b in a copy of the tree).  See the README.
.PHONY: deb
deb:
	bash $(srcdir)/scripts/deb.sh
