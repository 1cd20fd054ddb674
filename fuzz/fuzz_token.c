/*-------------------------------------------------------------------------
 *
 * fuzz_token.c
 *		libFuzzer harness for the token codec, the redactor and the input
 *		validators (flowella_token.c), built with ASan and UBSan.
 *
 * Besides "no crash, no out-of-bounds read", it checks what callers rely
 * on: a parse never accepts a string that is not token-shaped, a parse of a
 * freshly generated token always succeeds, redaction never overruns its
 * bound and leaves no token-shaped run longer than a prefix behind.
 *
 *-------------------------------------------------------------------------
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "../flowella_token.h"

int			LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int			LLVMFuzzerInitialize(int *argc, char ***argv);

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	if (sodium_init() < 0)
		abort();
	return 0;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* an exact-size heap copy, so ASan sees any read past the end */
	char	   *s = malloc(size ? size : 1);
	char	   *out;
	size_t		n;
	FlwlMode	mode;

	memcpy(s, data, size);

	mode = flwl_token_parse(s, size);
	if (mode != FLWL_MODE_INVALID)
	{
		char		again[FLWL_TOKEN_LEN];

		/* accepted input is exactly token-shaped */
		if (size != FLWL_TOKEN_LEN || memcmp(s, "flwl_", 5) != 0)
			abort();
		/* and regenerating with that mode yields another valid token */
		flwl_token_generate(mode, again);
		if (flwl_token_parse(again, FLWL_TOKEN_LEN) != mode)
			abort();
	}

	(void) flwl_label_problem(s, size);
	(void) flwl_traceparent_problem(s, size);
	(void) flwl_scope_name_problem(s, size);
	(void) flwl_role_known(s, size);

	/* a plan name that passes is 1-63 of [a-z0-9_-], starting a-z */
	if (flwl_plan_name_problem(s, size) == NULL)
	{
		if (size < 1 || size > 63 || s[0] < 'a' || s[0] > 'z')
			abort();
		for (size_t i = 0; i < size; i++)
			if (memchr("abcdefghijklmnopqrstuvwxyz0123456789_-", s[i], 38) == NULL)
				abort();
	}

	out = malloc(FLWL_REDACT_MAX(size) + 1);
	n = flwl_redact(s, size, out);
	if (n > FLWL_REDACT_MAX(size))
		abort();
	if (flwl_contains_token(out, n))
		abort();
	free(out);

	/* a token is never left inside a label that passes */
	if (flwl_label_problem(s, size) == NULL && flwl_contains_token(s, size))
		abort();

	free(s);
	return 0;
}
