-- Cache statistics (DESIGN.md section 7): the hit rate of every account's complete runs, by
-- tier, over 24 hours, 7 days and 30 days. The API answers it to any account, so a function
-- with its owner's rights computes it: counts only, never a row of another tenant.
CREATE INDEX analyses_finished ON analyses (finished_at) WHERE status = 'complete';

DO $$
BEGIN
    EXECUTE format('CREATE POLICY definer_stats ON analyses FOR SELECT TO %I USING (true)',
                   current_user);
END
$$;

CREATE FUNCTION cache_hit_rates()
    RETURNS TABLE (analysis_type text, window_name text, runs bigint, hits bigint)
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, public
    AS $$
        SELECT a.analysis_type, w.name, count(*),
               count(*) FILTER (WHERE (a.cost ->> 'cache_hit')::boolean)
        FROM public.analyses a
        JOIN (VALUES ('24h', interval '24 hours'), ('7d', interval '7 days'),
                     ('30d', interval '30 days')) AS w (name, span)
          ON a.finished_at >= now() - w.span
        WHERE a.status = 'complete' AND a.finished_at >= now() - interval '30 days'
        GROUP BY a.analysis_type, w.name;
    $$;
REVOKE EXECUTE ON FUNCTION cache_hit_rates() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION cache_hit_rates() TO oslira_api;
