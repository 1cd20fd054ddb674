\set i random(1, 10000)
SELECT * FROM flowella.apikey_verify((SELECT token FROM t WHERE i = :i), 'messages' || chr(58) || 'send');
