-- tag-set.lua: cache a value and register its key under tags, in one atomic step.
--
-- For cache writers when invalidator runs with `[tags] mode = "set"` (the default). See docs/tags.md.
--
--   EVAL <this script> N  KEY TAGSET...  VALUE TTL_MS
--
--   KEYS[1]     the cache key                           product:1001
--   KEYS[2..N]  the tag sets, [tags] prefix included     tag:product:1001 tag:category:shoes
--   ARGV[1]     the value
--   ARGV[2]     the key's TTL in milliseconds, a positive integer
--
-- It does SET KEY VALUE PX TTL_MS, then SADD TAGSET KEY for every tag set, and makes sure each tag
-- set lives at least as long as the key: a new set gets the key's TTL, a set with a shorter TTL is
-- extended to it (like PEXPIRE ... GT), a longer TTL is kept, a set without a TTL stays without one.
-- An index that expired before its members would let a tag invalidation miss live keys.
--
-- The tag sets are KEYS, not ARGV, as Redis requires of every key a script touches. In Redis
-- Cluster all KEYS must hash to one slot (e.g. {p1001}:... hash tags); otherwise do not use this
-- script: send SET, then the SADDs, in a pipeline (see docs/tags.md for why that order).
--
-- Returns the number of tag sets the key was newly added to.

if #ARGV ~= 2 then
  return redis.error_reply('ERR tag-set: expected exactly 2 arguments after the keys '
    .. '(VALUE TTL_MS); the tag sets are keys: EVAL script N KEY TAGSET... VALUE TTL_MS')
end

local ttl = tonumber(ARGV[2])
if ttl == nil or ttl < 1 or ttl ~= math.floor(ttl) then
  return redis.error_reply('ERR tag-set: TTL_MS must be a positive integer number of milliseconds')
end

local key = KEYS[1]
redis.call('SET', key, ARGV[1], 'PX', ttl)

local added = 0
for i = 2, #KEYS do
  local set = KEYS[i]
  -- -2: the set does not exist yet; -1: it exists without a TTL (left as it is).
  local before = redis.call('PTTL', set)
  added = added + redis.call('SADD', set, key)
  if before == -2 or (before >= 0 and before < ttl) then
    redis.call('PEXPIRE', set, ttl)
  end
end
return added
