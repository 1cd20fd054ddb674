/*-------------------------------------------------------------------------
 *
 * flowella_token.c
 *		Token generation, parsing and hashing, and the validators of
 *		labels, traceparent headers, scope names, plan names and roles.
 *
 * Each validator is the one statement of its rule: the API functions check
 * their arguments with it and the tables' CHECK constraints call it
 * (flowella_check.c), so a rule cannot drift between the two.  Plain C and
 * libsodium only, so the fuzzing harness links this file as it is.  Parsing decides MALFORMED from the bytes alone: length, head,
 * alphabet and CRC-32.  Nothing here allocates memory.
 *
 *-------------------------------------------------------------------------
 */
#include "flowella_token.h"

#include <string.h>

#include <sodium.h>

static const char base62_digits[] =
"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

static const char live_head[FLWL_HEAD_LEN + 1] = "flwl_live_";
static const char test_head[FLWL_HEAD_LEN + 1] = "flwl_test_";

/*
 * Tables for the checks verify runs on every token, built on first use
 * (building them twice concurrently would write the same values):
 *
 * - each byte's base62 value, or -1: a lookup, not a branch per
 *   character class;
 * - CRC-32 (IEEE 802.3, reflected, as zlib and GitHub's token checksums
 *   use), sliced by four: crc32_tables[0] is the classic byte table and
 *   crc32_tables[k] advances a byte through k more zero bytes, so four
 *   bytes cost four independent lookups instead of four dependent ones.
 */
static int8_t base62_values[256];
static uint32_t crc32_tables[4][256];
static bool tables_ready = false;

static void
tables_build(void)
{
	memset(base62_values, -1, sizeof(base62_values));
	for (int i = 0; i < 62; i++)
		base62_values[(unsigned char) base62_digits[i]] = (int8_t) i;

	for (uint32_t i = 0; i < 256; i++)
	{
		uint32_t	c = i;

		for (int b = 0; b < 8; b++)
			c = (c >> 1) ^ (0xEDB88320u & (0u - (c & 1u)));
		crc32_tables[0][i] = c;
	}
	for (int k = 1; k < 4; k++)
		for (uint32_t i = 0; i < 256; i++)
			crc32_tables[k][i] = (crc32_tables[k - 1][i] >> 8) ^
				crc32_tables[0][crc32_tables[k - 1][i] & 0xFF];
	tables_ready = true;
}

/* Value of a base62 digit, or -1. */
static inline int
base62_value(unsigned char c)
{
	if (!tables_ready)
		tables_build();
	return base62_values[c];
}

static uint32_t
crc32_ieee(const char *s, size_t len)
{
	const unsigned char *p = (const unsigned char *) s;
	uint32_t	crc = 0xFFFFFFFFu;

	if (!tables_ready)
		tables_build();
	for (; len >= 4; p += 4, len -= 4)
	{
		crc ^= (uint32_t) p[0] | (uint32_t) p[1] << 8 |
			(uint32_t) p[2] << 16 | (uint32_t) p[3] << 24;
		crc = crc32_tables[3][crc & 0xFF] ^ crc32_tables[2][(crc >> 8) & 0xFF] ^
			crc32_tables[1][(crc >> 16) & 0xFF] ^ crc32_tables[0][crc >> 24];
	}
	for (; len > 0; p++, len--)
		crc = (crc >> 8) ^ crc32_tables[0][(crc ^ *p) & 0xFF];
	return ~crc;
}

/* The checksum of the first FLWL_TOKEN_LEN - FLWL_CHECK_LEN bytes. */
static void
checksum_digits(const char *token, char out[FLWL_CHECK_LEN])
{
	uint32_t	crc = crc32_ieee(token, FLWL_TOKEN_LEN - FLWL_CHECK_LEN);

	for (int i = FLWL_CHECK_LEN - 1; i >= 0; i--)
	{
		out[i] = base62_digits[crc % 62];
		crc /= 62;
	}
}

const char *
flwl_mode_name(FlwlMode mode)
{
	switch (mode)
	{
		case FLWL_MODE_LIVE:
			return "live";
		case FLWL_MODE_TEST:
			return "test";
		default:
			return NULL;
	}
}

FlwlMode
flwl_mode_from_name(const char *name, size_t len)
{
	if (len == 4 && memcmp(name, "live", 4) == 0)
		return FLWL_MODE_LIVE;
	if (len == 4 && memcmp(name, "test", 4) == 0)
		return FLWL_MODE_TEST;
	return FLWL_MODE_INVALID;
}

void
flwl_token_generate(FlwlMode mode, char *buf)
{
	unsigned char pool[64];
	size_t		used = sizeof(pool);

	memcpy(buf, mode == FLWL_MODE_TEST ? test_head : live_head, FLWL_HEAD_LEN);

	/*
	 * One CSPRNG call fills a pool; bytes of 248 and above are rejected so
	 * that byte % 62 is uniform (248 = 4 * 62).  40 digits need about 41.3
	 * bytes on average, so the pool is rarely refilled.
	 */
	for (int i = FLWL_HEAD_LEN; i < FLWL_TOKEN_LEN - FLWL_CHECK_LEN;)
	{
		unsigned char b;

		if (used == sizeof(pool))
		{
			randombytes_buf(pool, sizeof(pool));
			used = 0;
		}
		b = pool[used++];
		if (b < 248)
			buf[i++] = base62_digits[b % 62];
	}
	sodium_memzero(pool, sizeof(pool));

	checksum_digits(buf, buf + FLWL_TOKEN_LEN - FLWL_CHECK_LEN);
}

/*
 * The mode named by the head of s[0..len), if the head is well formed and
 * everything after it is base62; FLWL_MODE_INVALID otherwise.  len is at
 * least FLWL_HEAD_LEN.
 */
static FlwlMode
head_and_body_mode(const char *s, size_t len)
{
	FlwlMode	mode;

	if (memcmp(s, live_head, FLWL_HEAD_LEN) == 0)
		mode = FLWL_MODE_LIVE;
	else if (memcmp(s, test_head, FLWL_HEAD_LEN) == 0)
		mode = FLWL_MODE_TEST;
	else
		return FLWL_MODE_INVALID;

	for (size_t i = FLWL_HEAD_LEN; i < len; i++)
		if (base62_value((unsigned char) s[i]) < 0)
			return FLWL_MODE_INVALID;
	return mode;
}

FlwlMode
flwl_token_parse(const char *s, size_t len)
{
	FlwlMode	mode;
	char		check[FLWL_CHECK_LEN];

	if (s == NULL || len != FLWL_TOKEN_LEN)
		return FLWL_MODE_INVALID;

	mode = head_and_body_mode(s, len);
	if (mode == FLWL_MODE_INVALID)
		return FLWL_MODE_INVALID;

	checksum_digits(s, check);
	if (memcmp(check, s + FLWL_TOKEN_LEN - FLWL_CHECK_LEN, FLWL_CHECK_LEN) != 0)
		return FLWL_MODE_INVALID;

	return mode;
}

FlwlMode
flwl_prefix_parse(const char *s, size_t len)
{
	if (s == NULL || len != FLWL_PREFIX_LEN)
		return FLWL_MODE_INVALID;
	return head_and_body_mode(s, len);
}

void
flwl_token_hash(const char *token, size_t len, unsigned char out[FLWL_HASH_LEN])
{
	crypto_hash_sha256(out, (const unsigned char *) token, len);
}

/*
 * Decode one UTF-8 sequence at s (len > 0).  Returns its length and sets *cp,
 * or returns 0 for an invalid, overlong or surrogate sequence.
 */
static size_t
utf8_decode(const unsigned char *s, size_t len, uint32_t *cp)
{
	size_t		n;
	uint32_t	c;

	if (s[0] < 0x80)
	{
		*cp = s[0];
		return 1;
	}
	else if ((s[0] & 0xE0) == 0xC0)
	{
		n = 2;
		c = s[0] & 0x1F;
	}
	else if ((s[0] & 0xF0) == 0xE0)
	{
		n = 3;
		c = s[0] & 0x0F;
	}
	else if ((s[0] & 0xF8) == 0xF0)
	{
		n = 4;
		c = s[0] & 0x07;
	}
	else
		return 0;

	if (n > len)
		return 0;
	for (size_t i = 1; i < n; i++)
	{
		if ((s[i] & 0xC0) != 0x80)
			return 0;
		c = (c << 6) | (s[i] & 0x3F);
	}
	if ((n == 2 && c < 0x80) || (n == 3 && c < 0x800) || (n == 4 && c < 0x10000) ||
		c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF))
		return 0;
	*cp = c;
	return n;
}

/*
 * Characters that show as blank space or as nothing at all: a label made of
 * them only is blank.  (Variation selectors and fillers are legitimate
 * inside emoji and Hangul, so they are not refused outright.)
 */
static bool
is_space_char(uint32_t c)
{
	return c == ' ' || c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) ||
		c == 0x202F || c == 0x205F || c == 0x3000 ||
		c == 0x034F || c == 0x115F || c == 0x1160 || c == 0x17B4 || c == 0x17B5 ||
		(c >= 0x180B && c <= 0x180F) || c == 0x2800 || c == 0x3164 ||
		(c >= 0xFE00 && c <= 0xFE0F) || c == 0xFFA0 ||
		(c >= 0xE0100 && c <= 0xE01EF);
}

/*
 * Characters that render as nothing or reorder the text around them: a label
 * holding them can read as another label (the "Trojan Source" family).
 */
static bool
is_invisible_format_char(uint32_t c)
{
	return c == 0x00AD || c == 0x061C || c == 0x180E ||
		(c >= 0x200B && c <= 0x200F) || (c >= 0x2028 && c <= 0x202E) ||
		(c >= 0x2060 && c <= 0x206F) || c == 0xFEFF ||
		(c >= 0xFFF9 && c <= 0xFFFB) || (c >= 0xE0000 && c <= 0xE007F);
}

const char *
flwl_label_problem(const char *s, size_t len)
{
	const unsigned char *p = (const unsigned char *) s;
	size_t		total = len;
	size_t		chars = 0;
	bool		blank = true;

	if (len == 0)
		return "The value must not be empty.";

	while (len > 0)
	{
		uint32_t	c;
		size_t		n = utf8_decode(p, len, &c);

		if (n == 0)
			return "The value is not valid UTF-8.";
		if (c < 0x20 || (c >= 0x7F && c <= 0x9F))
			return "The value must not contain control characters.";
		if (is_invisible_format_char(c))
			return "The value must not contain invisible or bidirectional formatting characters.";
		if (!is_space_char(c))
			blank = false;
		chars++;
		p += n;
		len -= n;
	}

	if (blank)
		return "The value must not be blank.";
	if (flwl_contains_token(s, total))
		return "The value must not contain an API token.";
	if (chars > FLWL_LABEL_MAX_CHARS)
		return "The value must be at most 100 characters long.";
	return NULL;
}

/* Whether len bytes at s are lower-case hex digits, and not all zeros. */
static bool
lower_hex_nonzero(const char *s, size_t len, bool *nonzero)
{
	*nonzero = false;
	for (size_t i = 0; i < len; i++)
	{
		char		c = s[i];

		if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')))
			return false;
		if (c != '0')
			*nonzero = true;
	}
	return true;
}

const char *
flwl_traceparent_problem(const char *s, size_t len)
{
	bool		nonzero;

	if (len != FLWL_TRACEPARENT_LEN || s[2] != '-' || s[35] != '-' || s[52] != '-')
		return "A traceparent has the form 00-<32 hex digits>-<16 hex digits>-<2 hex digits>.";
	if (s[0] != '0' || s[1] != '0')
		return "Only version 00 of the W3C trace context is accepted.";
	if (!lower_hex_nonzero(s + 53, 2, &nonzero))
		return "The trace flags must be two lower-case hex digits.";
	if (!lower_hex_nonzero(s + 3, 32, &nonzero))
		return "The trace id must be lower-case hex digits.";
	if (!nonzero)
		return "The trace id must not be all zeros.";
	if (!lower_hex_nonzero(s + 36, 16, &nonzero))
		return "The parent id must be lower-case hex digits.";
	if (!nonzero)
		return "The parent id must not be all zeros.";
	return NULL;
}

const char *
flwl_scope_name_problem(const char *s, size_t len)
{
	bool		segment_empty = false;

	if (len == 0 || len > 64)
		return "A scope name has 1 to 64 characters.";
	if (!(s[0] >= 'a' && s[0] <= 'z'))
		return "A scope name starts with a lower-case letter.";

	for (size_t i = 0; i < len; i++)
	{
		char		c = s[i];

		if (c == ':')
		{
			if (segment_empty)
				break;
			segment_empty = true;
			continue;
		}
		if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
			  c == '_' || c == '.' || c == '-'))
			return "A scope name holds only lower-case letters, digits, \"_\", \".\", \"-\" and \":\".";
		segment_empty = false;
	}
	if (segment_empty)
		return "Every part of a scope name between colons must be non-empty.";
	return NULL;
}

/*
 * A plan name: 1 to 63 characters, lower-case ASCII letters, digits, "_"
 * and "-", starting with a letter (what plans.plan_check held as the regex
 * ^[a-z][a-z0-9_-]{0,62}$ before 1.2).
 */
const char *
flwl_plan_name_problem(const char *s, size_t len)
{
	bool		ok = len >= 1 && len <= 63 && s[0] >= 'a' && s[0] <= 'z';

	for (size_t i = 1; ok && i < len; i++)
	{
		char		c = s[i];

		ok = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
			c == '_' || c == '-';
	}
	return ok ? NULL :
		"A plan name has 1 to 63 characters: lower-case letters, digits, \"_\" and \"-\", starting with a letter.";
}

const char *const flwl_role_names[] = FLWL_ROLE_NAMES;
const size_t flwl_role_count = sizeof(flwl_role_names) / sizeof(flwl_role_names[0]);

bool
flwl_role_known(const char *s, size_t len)
{
	for (size_t i = 0; i < flwl_role_count; i++)
		if (strlen(flwl_role_names[i]) == len &&
			memcmp(flwl_role_names[i], s, len) == 0)
			return true;
	return false;
}

/*
 * Length of the token-shaped run at s (len bytes available): "flwl_" and the
 * [0-9A-Za-z_] characters after it; 0 when s does not start one.
 */
static size_t
token_run_length(const char *s, size_t len)
{
	size_t		n;

	if (len < 5 || memcmp(s, "flwl_", 5) != 0)
		return 0;
	for (n = 5; n < len; n++)
		if (s[n] != '_' && base62_value((unsigned char) s[n]) < 0)
			break;
	return n;
}

bool
flwl_contains_token(const char *s, size_t len)
{
	for (size_t i = 0; i + 5 <= len; i++)
		if (s[i] == 'f' && token_run_length(s + i, len - i) > FLWL_PREFIX_LEN)
			return true;
	return false;
}

size_t
flwl_redact(const char *in, size_t len, char *out)
{
	size_t		o = 0;
	size_t		i = 0;

	while (i < len)
	{
		size_t		run = (in[i] == 'f') ? token_run_length(in + i, len - i) : 0;

		if (run > FLWL_PREFIX_LEN)
		{
			memcpy(out + o, in + i, FLWL_PREFIX_LEN);
			o += FLWL_PREFIX_LEN;
			memcpy(out + o, FLWL_REDACTED_MARK, sizeof(FLWL_REDACTED_MARK) - 1);
			o += sizeof(FLWL_REDACTED_MARK) - 1;
			i += run;
		}
		else
			out[o++] = in[i++];
	}
	return o;
}
