/*-------------------------------------------------------------------------
 *
 * flowella_scopes.c
 *		Scope sets, and the names they hold quoted in messages.
 *
 * A scope set is a text[] of scope names with its elements sorted in byte
 * order beside it (FlwlScopeSet), so that membership costs a binary search:
 * verify, create and replace all test names against a plan's set, and sets
 * may hold thousands of names.
 *
 * Names quoted in messages pass through flwl_quotable, which redacts
 * token-shaped runs: a message can reach the server log, and a caller may
 * pass a token where a name was expected.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type_d.h"
#include "mb/pg_wchar.h"
#include "utils/array.h"
#include "utils/builtins.h"

#include "flowella_apikey.h"
#include "flowella_token.h"

/*---- Scope sets ----*/

/* Byte order of two text Datums, for qsort and bsearch. */
int
flwl_text_datum_cmp(const void *a, const void *b)
{
	text	   *x = DatumGetTextPP(*(const Datum *) a);
	text	   *y = DatumGetTextPP(*(const Datum *) b);
	size_t		lx = VARSIZE_ANY_EXHDR(x);
	size_t		ly = VARSIZE_ANY_EXHDR(y);
	int			c = memcmp(VARDATA_ANY(x), VARDATA_ANY(y), Min(lx, ly));

	return c != 0 ? c : (lx > ly) - (lx < ly);
}

/*
 * The elements of a text[] (NULLs dropped), sorted, for flwl_scope_set_has.
 * Sorting makes membership tests O(log n): scope arrays come from callers
 * and may hold thousands of names.
 */
FlwlScopeSet
flwl_scope_set(Datum scopes)
{
	FlwlScopeSet set;
	bool	   *nulls;
	int			n;

	deconstruct_array(DatumGetArrayTypeP(scopes), TEXTOID, -1, false,
					  TYPALIGN_INT, &set.elems, &nulls, &n);
	set.array = scopes;
	set.n = 0;
	for (int i = 0; i < n; i++)
		if (!nulls[i])
			set.elems[set.n++] = set.elems[i];
	if (set.n > 1)
		qsort(set.elems, set.n, sizeof(Datum), flwl_text_datum_cmp);
	return set;
}

bool
flwl_scope_set_has(const FlwlScopeSet *set, Datum scope)
{
	return bsearch(&scope, set->elems, set->n, sizeof(Datum),
				   flwl_text_datum_cmp) != NULL;
}

/*
 * The scopes a key may use now: its own (or, when NULL, all of its plan's)
 * that its organisation's plan still offers.
 */
FlwlScopeSet
flwl_effective_scopes(Datum key_scopes, bool key_scopes_null,
					  const FlwlScopeSet *plan)
{
	FlwlScopeSet set;
	bool	   *nulls;
	int			n;

	if (key_scopes_null)
		return *plan;

	deconstruct_array(DatumGetArrayTypeP(key_scopes), TEXTOID, -1, false,
					  TYPALIGN_INT, &set.elems, &nulls, &n);
	set.n = 0;
	for (int i = 0; i < n; i++)
		if (!nulls[i] && flwl_scope_set_has(plan, set.elems[i]))
			set.elems[set.n++] = set.elems[i];

	/* the array keeps the key's order; the elements are sorted for lookups */
	set.array = PointerGetDatum(construct_array(set.elems, set.n, TEXTOID, -1,
												false, TYPALIGN_INT));
	if (set.n > 1)
		qsort(set.elems, set.n, sizeof(Datum), flwl_text_datum_cmp);
	return set;
}

/*---- Names in messages ----*/

char *
flwl_quotable(const char *s, size_t len)
{
	char	   *out;
	size_t		n;

	if (len > 200)				/* messages quote names, not documents */
		len = pg_mbcliplen(s, len, 200);
	out = palloc(FLWL_REDACT_MAX(len) + 1);
	n = flwl_redact(s, len, out);
	out[n] = '\0';
	return out;
}
