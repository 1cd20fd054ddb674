-- The alternative a user would write by hand: plpgsql + pgcrypto functions
-- with the same semantics as apikey_create and apikey_verify (no checksum:
-- plain SQL has no CRC-32, so a typo costs a table probe here).  Used only by
-- the benchmark, never installed by the extension.
CREATE SCHEMA bench;

CREATE FUNCTION bench.apikey_create(p_org uuid, p_label text,
                                    p_scopes text[] DEFAULT NULL,
                                    p_mode text DEFAULT 'live',
                                    p_expires timestamptz DEFAULT NULL)
RETURNS TABLE (key_id uuid, token text, prefix text)
LANGUAGE plpgsql AS $$
DECLARE
    v_actor uuid := flowella.actor_user_id();
    v_plan text;
    v_plan_scopes text[];
    v_bytes bytea;
    v_body text := '';
    v_active bigint;
    alphabet constant text := '0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz';
BEGIN
    IF v_actor IS NULL THEN
        RAISE EXCEPTION 'no actor' USING ERRCODE = '42501';
    END IF;
    SELECT o.plan, p.scopes INTO v_plan, v_plan_scopes
      FROM flowella.members m
      JOIN flowella.orgs o ON o.org_id = m.org_id
      JOIN flowella.plans p ON p.plan = o.plan
     WHERE m.org_id = p_org AND m.user_id = v_actor AND m.role IN ('owner', 'admin')
       FOR SHARE OF m;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'permission denied' USING ERRCODE = '42501';
    END IF;
    IF p_label IS NULL OR btrim(p_label) = '' OR char_length(p_label) > 100
       OR p_label ~ '[[:cntrl:]]' THEN
        RAISE EXCEPTION 'invalid label' USING ERRCODE = '22023';
    END IF;
    IF p_mode IS NULL OR p_mode NOT IN ('live', 'test') THEN
        RAISE EXCEPTION 'invalid mode' USING ERRCODE = '22023';
    END IF;
    IF p_expires IS NOT NULL AND p_expires <= clock_timestamp() THEN
        RAISE EXCEPTION 'invalid expires_at' USING ERRCODE = '22023';
    END IF;
    IF p_scopes IS NOT NULL AND (cardinality(p_scopes) = 0 OR NOT p_scopes <@ v_plan_scopes) THEN
        RAISE EXCEPTION 'invalid scopes' USING ERRCODE = '22023';
    END IF;
    -- whether the org is past 50 active keys: at most 51 index entries per
    -- probe, written the way apikey_create writes it (ORDER BY keeps the
    -- planner on the index, now() makes the expiry bound an index condition)
    SELECT count(*) INTO v_active FROM (
        (SELECT 1 FROM flowella.api_keys k
          WHERE k.org_id = p_org AND k.revoked_at IS NULL AND k.expires_at IS NULL
          ORDER BY k.org_id, k.expires_at LIMIT 51)
        UNION ALL
        (SELECT 1 FROM flowella.api_keys k
          WHERE k.org_id = p_org AND k.revoked_at IS NULL AND k.expires_at > now()
          ORDER BY k.org_id, k.expires_at LIMIT 51)) s;

    v_bytes := gen_random_bytes(40);
    FOR i IN 0..39 LOOP
        v_body := v_body || substr(alphabet, get_byte(v_bytes, i) % 62 + 1, 1);
    END LOOP;
    v_body := v_body || substr(encode(gen_random_bytes(6), 'hex'), 1, 6);
    token := 'flwl_' || p_mode || '_' || v_body;
    prefix := left(token, 18);
    INSERT INTO flowella.api_keys AS k
           (org_id, label, prefix, secret_hash, scopes, mode, created_by, expires_at)
    VALUES (p_org, p_label, prefix, digest(token, 'sha256'),
            (SELECT array_agg(DISTINCT s ORDER BY s) FROM unnest(p_scopes) s),
            p_mode, v_actor, p_expires)
    RETURNING k.key_id INTO key_id;
    IF v_active = 50 THEN
        RAISE NOTICE 'organisation now has more than 50 active API keys';
    END IF;
    RETURN NEXT;
END
$$;

CREATE FUNCTION bench.apikey_verify(p_token text, p_required text DEFAULT NULL)
RETURNS flowella.verification
LANGUAGE plpgsql AS $$
DECLARE
    k record;
    r flowella.verification;
BEGIN
    r.valid := false;
    IF p_token IS NULL OR length(p_token) <> 56
       OR p_token !~ '^flwl_(live|test)_[0-9A-Za-z]{46}$' THEN
        r.code := 'MALFORMED';
        RETURN r;
    END IF;
    SELECT a.key_id, a.org_id, a.secret_hash, a.scopes, a.mode, a.revoked_at,
           a.expires_at, p.scopes AS plan_scopes
      INTO k
      FROM flowella.api_keys a
      JOIN flowella.orgs o ON o.org_id = a.org_id
      JOIN flowella.plans p ON p.plan = o.plan
     WHERE a.prefix = left(p_token, 18);
    IF NOT FOUND OR k.secret_hash <> digest(p_token, 'sha256') THEN
        r.code := 'NOT_FOUND';
        RETURN r;
    END IF;
    r.key_id := k.key_id;
    r.org_id := k.org_id;
    r.mode := k.mode;
    IF k.revoked_at IS NOT NULL THEN
        r.code := 'REVOKED';
    ELSIF k.expires_at IS NOT NULL AND k.expires_at <= clock_timestamp() THEN
        r.code := 'EXPIRED';
    ELSE
        r.scopes := ARRAY(SELECT s FROM unnest(coalesce(k.scopes, k.plan_scopes)) s
                           WHERE s = ANY (k.plan_scopes));
        IF p_required IS NOT NULL AND NOT p_required = ANY (r.scopes) THEN
            r.code := 'INSUFFICIENT_SCOPE';
        ELSE
            r.valid := true;
            r.code := 'VALID';
        END IF;
    END IF;
    RETURN r;
END
$$;
