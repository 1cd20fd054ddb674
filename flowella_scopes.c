/*-------------------------------------------------------------------------
 *
 * flowella_scopes.c
 *		Scope sets, and the names they hold quoted in messages.
 *
 * One rule says what a scope list may hold, flwl_scope_array_problem: the
 * CHECK constraints of stored sets and the API functions' arguments all
 * ask it.
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
#include "lib/stringinfo.h"
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

/*---- Scope lists ----*/

/*
 * What is wrong with a scope list, as an English sentence for errdetail, or
 * NULL.  A list is one-dimensional and holds no NULL; with
 * FLWL_SCOPES_NOT_EMPTY it holds a name at least, and with
 * FLWL_SCOPES_NAMES every name is well formed (flwl_scope_name_problem),
 * the answer then naming the bad ones in byte order, as a stored set holds
 * them.  *elems and *n are set to its
 * elements once it is known to be one-dimensional (to none before).
 */
const char *
flwl_scope_array_problem(ArrayType *arr, int flags, Datum **elems, int *n)
{
	bool	   *nulls;
	Datum	   *bad = NULL;
	int			nbad = 0;
	StringInfoData list;
	int			listed = 0;
	text	   *first;

	*elems = NULL;
	*n = 0;
	if (ARR_NDIM(arr) == 0 && (flags & FLWL_SCOPES_NOT_EMPTY))
		return "The scope list is empty.";
	if (ARR_NDIM(arr) > 1)
		return "The scope list must be one-dimensional.";

	deconstruct_array(arr, TEXTOID, -1, false, TYPALIGN_INT, elems, &nulls, n);
	for (int i = 0; i < *n; i++)
		if (nulls[i])
			return "Scope names must not be null.";
	if (!(flags & FLWL_SCOPES_NAMES))
		return NULL;

	for (int i = 0; i < *n; i++)
	{
		text	   *s = DatumGetTextPP((*elems)[i]);

		if (flwl_scope_name_problem(VARDATA_ANY(s), VARSIZE_ANY_EXHDR(s)) == NULL)
			continue;
		if (bad == NULL)
			bad = palloc(sizeof(Datum) * *n);
		bad[nbad++] = (*elems)[i];
	}
	if (nbad == 0)
		return NULL;

	/* the bad names in byte order, each once, and what is wrong with the first */
	if (nbad > 1)
		qsort(bad, nbad, sizeof(Datum), flwl_text_datum_cmp);
	initStringInfo(&list);
	for (int i = 0; i < nbad; i++)
		if (i == 0 || flwl_text_datum_cmp(&bad[i - 1], &bad[i]) != 0)
			flwl_append_name(&list, &listed, DatumGetTextPP(bad[i]));
	flwl_finish_name_list(&list, listed);
	first = DatumGetTextPP(bad[0]);
	return psprintf("Invalid scope names: %s. %s", list.data,
					flwl_scope_name_problem(VARDATA_ANY(first),
											VARSIZE_ANY_EXHDR(first)));
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

/*
 * Append a quoted name to a list being built for a message: the first
 * FLWL_MESSAGE_MAX_NAMES, counted in *listed; flwl_finish_name_list says
 * how many more there were.
 */
void
flwl_append_name(StringInfo buf, int *listed, text *name)
{
	if (*listed < FLWL_MESSAGE_MAX_NAMES)
		appendStringInfo(buf, "%s\"%s\"", *listed > 0 ? ", " : "",
						 flwl_quotable(VARDATA_ANY(name), VARSIZE_ANY_EXHDR(name)));
	(*listed)++;
}

void
flwl_finish_name_list(StringInfo buf, int listed)
{
	if (listed > FLWL_MESSAGE_MAX_NAMES)
		appendStringInfo(buf, " and %d more", listed - FLWL_MESSAGE_MAX_NAMES);
}
