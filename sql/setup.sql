--
-- Shared fixtures for the whole suite: the extension, the test roles and
-- plans, and helpers that print a token's shape instead of its text.
-- Every later file creates its own organisations.
--
CREATE EXTENSION pgcrypto;
CREATE EXTENSION flowella_apikey;

-- The install creates the four NOLOGIN roles.
SELECT rolname, rolcanlogin
  FROM pg_roles WHERE rolname LIKE 'flowella\_apikey\_%' ORDER BY rolname;

-- Login-less stand-ins for the backend's login roles, one per extension role,
-- and one with no grant at all.  Tests act as them with SET ROLE.
CREATE ROLE regress_verifier;
CREATE ROLE regress_manager;
CREATE ROLE regress_admin;
CREATE ROLE regress_auditor;
CREATE ROLE regress_nobody;
GRANT flowella_apikey_verifier TO regress_verifier;
GRANT flowella_apikey_manager TO regress_manager;
GRANT flowella_apikey_admin TO regress_admin;
GRANT flowella_apikey_auditor TO regress_auditor;

-- A token's shape: mode, lengths and alphabet, never its characters.
CREATE FUNCTION regress_shape(token text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
	SELECT CASE WHEN token IS NULL THEN 'NULL'
		ELSE regexp_replace(token, '^(flwl_(live|test)_)[0-9A-Za-z]*$', '\1') ||
			 '<' || (length(token) - 10)::text || ' base62>' END
$$;

-- Whether a token is well formed: 56 characters, its prefix its first 18.
CREATE FUNCTION regress_token_ok(token text, prefix text) RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$
	SELECT token ~ '^flwl_(live|test)_[0-9A-Za-z]{46}$'
	   AND prefix = left(token, 18)
$$;

-- CRC-32 (IEEE) of the first 50 characters as 6 base62 digits: the checksum
-- layout of a token, to check generated tokens and to build well-formed
-- token-shaped strings (tokens.sql, verify.sql).
CREATE FUNCTION regress_checksum(head text) RETURNS text
LANGUAGE plpgsql IMMUTABLE STRICT AS $$
DECLARE
	bytes bytea := convert_to(head, 'UTF8');
	crc bigint := 4294967295;
	digits text := '0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz';
	out text := '';
BEGIN
	FOR i IN 0 .. length(bytes) - 1 LOOP
		crc := crc # get_byte(bytes, i);
		FOR b IN 1 .. 8 LOOP
			crc := CASE WHEN crc & 1 = 1 THEN (crc >> 1) # 3988292384 ELSE crc >> 1 END;
		END LOOP;
	END LOOP;
	crc := crc # 4294967295;
	FOR i IN 1 .. 6 LOOP
		out := substr(digits, (crc % 62)::int + 1, 1) || out;
		crc := crc / 62;
	END LOOP;
	RETURN out;
END
$$;

SET ROLE regress_admin;
SELECT flowella.plan_set('free', ARRAY['messages:read'], false);
SELECT flowella.plan_set('pro', ARRAY['messages:send', 'messages:read', 'analytics:read'], false);
SELECT flowella.plan_set('enterprise', ARRAY['messages:send', 'messages:read', 'analytics:read', 'channels:manage'], true);
RESET ROLE;

SELECT plan, scopes, audit_log FROM flowella.plans ORDER BY plan;
