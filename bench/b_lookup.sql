\set i random(1, 10000)
SELECT k.key_id, k.secret_hash FROM t JOIN flowella.api_keys k ON k.prefix = left(t.token, 18) WHERE t.i = :i;
