# flowella_apikey: API keys for Flowella organisations, in PostgreSQL.

MODULE_big = flowella_apikey
OBJS = \
	$(WIN32RES) \
	flowella_apikey.o \
	flowella_manage.o \
	flowella_token.o

EXTENSION = flowella_apikey
DATA = flowella_apikey--1.0.sql
PGFILEDESC = "flowella_apikey - API keys for Flowella organisations"

SHLIB_LINK += -lsodium

# The suite needs the library preloaded, as in production (log redaction and
# usage tracking live in shared memory); installcheck runs against a server
# started with that setting (see README: pg_virtualenv -o ...).
REGRESS = setup tokens actor plans_orgs members create verify revoke \
	scopes replace list hostile
REGRESS_OPTS = --inputdir=test --outputdir=test/results
ISOLATION = revoke_verify concurrent_create
ISOLATION_OPTS = --inputdir=test --outputdir=test/results

PG_CFLAGS += -Wall -Wextra -Wno-unused-parameter -Wno-missing-field-initializers

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)
