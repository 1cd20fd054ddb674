/*-------------------------------------------------------------------------
 *
 * flowella_token.h
 *		Token codec and input validators of flowella_apikey, and the list
 *		of members' roles.
 *
 * Nothing here depends on the PostgreSQL backend: the same code is linked
 * into the extension and into the fuzzing harness.  Functions that see a
 * token never copy it anywhere but into buffers their caller owns and wipes.
 *
 *-------------------------------------------------------------------------
 */
#ifndef FLOWELLA_TOKEN_H
#define FLOWELLA_TOKEN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/*
 * Token layout: "flwl_" <mode:4> "_" <lookup:8> <secret:32> <check:6>
 *
 * The body is base62.  lookup is public (it is the tail of the prefix);
 * secret carries 32 * log2(62) = 190 bits from libsodium's CSPRNG; check is
 * the CRC-32 of everything before it, so a typo or a truncation is caught
 * without a table access.  All lengths are fixed.
 */
#define FLWL_HEAD_LEN		10	/* "flwl_live_" or "flwl_test_" */
#define FLWL_LOOKUP_LEN		8
#define FLWL_SECRET_LEN		32
#define FLWL_CHECK_LEN		6
#define FLWL_BODY_LEN		(FLWL_LOOKUP_LEN + FLWL_SECRET_LEN + FLWL_CHECK_LEN)
#define FLWL_TOKEN_LEN		(FLWL_HEAD_LEN + FLWL_BODY_LEN)
#define FLWL_PREFIX_LEN		(FLWL_HEAD_LEN + FLWL_LOOKUP_LEN)
#define FLWL_HASH_LEN		32	/* SHA-256 */

#define FLWL_LABEL_MAX_CHARS	100
#define FLWL_TRACEPARENT_LEN	55

typedef enum FlwlMode
{
	FLWL_MODE_INVALID = 0,
	FLWL_MODE_LIVE,
	FLWL_MODE_TEST
} FlwlMode;

extern const char *flwl_mode_name(FlwlMode mode);
extern FlwlMode flwl_mode_from_name(const char *name, size_t len);

/*
 * Fill buf[FLWL_TOKEN_LEN] with a new token of the given mode (not
 * NUL-terminated).  Needs sodium_init() to have succeeded.
 */
extern void flwl_token_generate(FlwlMode mode, char *buf);

/*
 * Check the shape and checksum of len bytes at s.  Returns the mode, or
 * FLWL_MODE_INVALID for anything malformed.  Reads at most FLWL_TOKEN_LEN
 * bytes and never past len.
 */
extern FlwlMode flwl_token_parse(const char *s, size_t len);

/* The mode of a well-formed prefix (head + lookup part), or invalid. */
extern FlwlMode flwl_prefix_parse(const char *s, size_t len);

/* SHA-256 of a token, as stored in api_keys.secret_hash. */
extern void flwl_token_hash(const char *token, size_t len,
							unsigned char out[FLWL_HASH_LEN]);

/*
 * Redaction.  A token-shaped run is "flwl_" followed by [0-9A-Za-z_]
 * characters; one longer than a prefix is cut to the prefix plus a marker.
 * flwl_redact writes at most FLWL_REDACT_MAX(len) bytes to out (no NUL) and
 * returns how many.
 */
#define FLWL_REDACTED_MARK	"[REDACTED]"
#define FLWL_REDACT_MAX(len)	((len) + ((len) / (FLWL_PREFIX_LEN + 1) + 1) * sizeof(FLWL_REDACTED_MARK))

extern bool flwl_contains_token(const char *s, size_t len);
extern size_t flwl_redact(const char *in, size_t len, char *out);

/*
 * Validators.  Each returns NULL when the input is acceptable, or an English
 * sentence (static storage) saying what is wrong, for use as errdetail.
 */
extern const char *flwl_label_problem(const char *s, size_t len);
extern const char *flwl_traceparent_problem(const char *s, size_t len);
extern const char *flwl_scope_name_problem(const char *s, size_t len);
extern const char *flwl_plan_name_problem(const char *s, size_t len);

/*
 * A member's role in an organisation.  FLWL_ROLE_NAMES is the one list of
 * them; owners and admins manage the organisation's keys, which is what
 * FLWL_KEY_MANAGER_ROLES_SQL says to the queries that check an actor.
 */
#define FLWL_ROLE_OWNER			"owner"
#define FLWL_ROLE_ADMIN			"admin"
#define FLWL_ROLE_NAMES			{FLWL_ROLE_OWNER, FLWL_ROLE_ADMIN, "user", "read_only"}
#define FLWL_KEY_MANAGER_ROLES_SQL \
	"ARRAY['" FLWL_ROLE_OWNER "', '" FLWL_ROLE_ADMIN "']"

extern const char *const flwl_role_names[];
extern const size_t flwl_role_count;

/* Whether len bytes at s name a role. */
extern bool flwl_role_known(const char *s, size_t len);

#endif							/* FLOWELLA_TOKEN_H */
