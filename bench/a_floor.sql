\set i random(1, 10000)
SELECT :i;
