/*
 * Write a seed corpus for fuzz_token: real tokens of both modes, a
 * traceparent, labels and scope names.  Usage: seed_corpus DIR
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "../flowella_token.h"

static void
put(const char *dir, int n, const char *s, size_t len)
{
	char		path[4096];
	FILE	   *f;

	snprintf(path, sizeof(path), "%s/seed%03d", dir, n);
	f = fopen(path, "wb");
	if (f == NULL || fwrite(s, 1, len, f) != len || fclose(f) != 0)
		exit(1);
}

int
main(int argc, char **argv)
{
	static const char *const others[] = {
		"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
		"n8n production", "analytics export script", "messages:send",
		"flwl_live_a1b2c3d4", "Bearer flwl_test_x", "\xe2\x80\xae label",
	};
	char		tok[FLWL_TOKEN_LEN];
	int			n = 0;

	if (argc != 2 || sodium_init() < 0)
		return 1;
	for (int i = 0; i < 8; i++)
	{
		flwl_token_generate(i % 2 ? FLWL_MODE_TEST : FLWL_MODE_LIVE, tok);
		put(argv[1], n++, tok, sizeof(tok));
	}
	for (size_t i = 0; i < sizeof(others) / sizeof(others[0]); i++)
		put(argv[1], n++, others[i], strlen(others[i]));
	return 0;
}
