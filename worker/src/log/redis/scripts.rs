//! The Lua scripts that number and append records, start a stream after a sequence and
//! re-seed it; each runs atomically on the Redis primary.

/// Appends a batch. KEYS: stream, counter, epoch, applied registry. ARGV: a fresh epoch id
/// (adopted when the knowledge base has none yet), the epoch the writer follows ('' when it
/// follows none yet), the writer's floor (the highest sequence it applied or saw logged),
/// then the payloads. Refuses, before writing anything, when Redis went behind what
/// replicas already applied (failover to a replica that missed writes, a lost volume,
/// `FLUSHALL`, an evicted counter) or when the stream was re-seeded under another epoch:
/// numbering from there would reuse sequences replicas already hold. Every entry carries
/// the epoch (`e`) and the sequence of its batch's last entry (`b`).
pub(super) const APPEND_SCRIPT: &str = r"
local counter = tonumber(redis.call('GET', KEYS[2]) or '0')
local top = 0
local newest = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if #newest > 0 then top = tonumber(string.match(newest[1][1], '^(%d+)')) end
local floor = tonumber(ARGV[3])
for _, v in ipairs(redis.call('HVALS', KEYS[4])) do
  local applied = tonumber(string.match(v, '^(%d+)'))
  if applied and applied > floor then floor = applied end
end
local epoch = redis.call('GET', KEYS[3])
if not epoch then
  if counter == 0 and top == 0 and floor > 0 then
    return redis.error_reply('KBLOST ' .. floor)
  end
  epoch = ARGV[1] .. ':' .. counter .. ':'
  redis.call('SET', KEYS[3], epoch)
end
local id = string.match(epoch, '^([^:]*)')
if ARGV[2] ~= '' and id ~= ARGV[2] then
  return redis.error_reply('KBEPOCH ' .. epoch)
end
if counter < floor or counter < top then
  return redis.error_reply('KBBEHIND ' .. counter .. ' ' .. top .. ' ' .. floor)
end
local n = #ARGV - 3
local last = counter + n
redis.call('SET', KEYS[2], last)
for i = 1, n do
  redis.call('XADD', KEYS[1], (counter + i) .. '-1', 'r', ARGV[i + 3], 'e', id, 'b', last)
end
return {last, epoch}
";

/// Starts an empty stream (counter unset, no entries) at `ARGV[1]`: the next append gets
/// the sequence after it, in a new epoch (`ARGV[2]`) whose parent is unknown. Returns the
/// counter, unchanged when the stream was not empty.
pub(super) const START_AT_SCRIPT: &str = r"
local current = tonumber(redis.call('GET', KEYS[2]) or '0')
if current == 0 and redis.call('XLEN', KEYS[1]) == 0 then
  redis.call('SET', KEYS[2], ARGV[1])
  redis.call('SET', KEYS[3], ARGV[2] .. ':' .. ARGV[1] .. ':')
  return tonumber(ARGV[1])
end
return current
";

/// Re-seeds the stream at `ARGV[2]` in a new epoch `ARGV[1]` whose parent is `ARGV[3]`:
/// drops every entry (their numbering can no longer be trusted) and sets the counter.
/// Refuses when another replica re-seeded first (the epoch is no longer the parent) or
/// when the counter went past the base (writes numbered beyond what the re-seeder holds).
pub(super) const RESEED_SCRIPT: &str = r"
local current = redis.call('GET', KEYS[3])
if current then
  local id = string.match(current, '^([^:]*)')
  if id ~= ARGV[3] then return redis.error_reply('KBEPOCH ' .. current) end
end
local counter = tonumber(redis.call('GET', KEYS[2]) or '0')
if counter > tonumber(ARGV[2]) then
  return redis.error_reply('KBAHEAD ' .. counter)
end
redis.call('DEL', KEYS[1])
redis.call('SET', KEYS[2], ARGV[2])
redis.call('SET', KEYS[3], ARGV[1] .. ':' .. ARGV[2] .. ':' .. ARGV[3])
return 1
";
