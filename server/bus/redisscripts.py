"""The Lua scripts that make Redis the sequencer of every stream of a cluster. Pure text: no I/O here.

Each runs atomically in Redis, so every node sees one order per stream and one history.

``SEQUENCE`` (KEYS: meta, history, dedup; ARGV: channel, envelope header, payload, history size,
meta TTL ms, history TTL ms, dedup TTL ms, a new epoch, use dedup (``1``/``0``)): reads (or makes) the
stream's epoch; a publication already acknowledged within the dedup window returns its first offset;
otherwise increments the offset, stamps the payload (``{"offset":N,"epoch":"E",...``), appends it to the
history (``XADD`` with id ``<offset>-0``, ``MAXLEN`` = history size, exactly), remembers the dedup entry,
and publishes ``header .. stamped`` on the stream's channel. Returns ``{offset, epoch, duplicate}``.

``REPLAY`` (KEYS: meta, history; ARGV: since offset (``""``: none), since epoch, history TTL ms, a new
epoch, meta TTL ms, the stream's channel, a marker): the stream's position and, with ``since``, the
messages to replay under the rules of docs/protocol.md. Returns ``{epoch, latest, verdict, payloads}`` with
verdict ``1`` recovered, ``0`` not recovered, ``-1`` no since given, ``-2`` since ahead of the latest
offset (``bad_since``). It also publishes the marker on the stream's channel, in the same atomic step: the
joining worker receives every message up to ``latest`` on its subscription *before* the marker, and every
later one after it, so it knows when its replay and the live stream meet.

``RESET`` (KEYS: meta, history; ARGV: a new epoch, meta TTL ms): gives the stream a new epoch, offset 0,
empty history (after a Redis outage during which the stream was published to locally).

Time comes from Redis (``TIME``), the same clock for every node. The meta hash outlives the history
(``meta TTL``): an idle stream keeps its epoch and offset after its messages have aged out.
"""

from __future__ import annotations

from typing import Final

SEQUENCE: Final = """
local meta, hist, dedup = KEYS[1], KEYS[2], KEYS[3]
local epoch = redis.call('HGET', meta, 'e')
if not epoch then
  epoch = ARGV[8]
  redis.call('HSET', meta, 'e', epoch, 'o', 0)
  redis.call('DEL', hist)
end
if ARGV[9] == '1' then
  local seen = redis.call('GET', dedup)
  if seen then
    local sep = string.find(seen, ':', 1, true)
    if sep and string.sub(seen, sep + 1) == epoch then
      return {tonumber(string.sub(seen, 1, sep - 1)), epoch, 1}
    end
  end
end
local offset = redis.call('HINCRBY', meta, 'o', 1)
local stamped = '{"offset":' .. string.format('%d', offset) .. ',"epoch":"' .. epoch .. '",' .. string.sub(ARGV[3], 2)
local size = tonumber(ARGV[4])
if size > 0 then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('XADD', hist, 'MAXLEN', size, string.format('%d', offset) .. '-0', 't', string.format('%d', now), 'p', stamped)
  redis.call('PEXPIRE', hist, ARGV[6])
end
redis.call('PEXPIRE', meta, ARGV[5])
if ARGV[9] == '1' then
  redis.call('SET', dedup, string.format('%d', offset) .. ':' .. epoch, 'PX', ARGV[7])
end
redis.call('PUBLISH', ARGV[1], ARGV[2] .. stamped)
return {offset, epoch, 0}
"""

REPLAY: Final = """
local meta, hist = KEYS[1], KEYS[2]
local epoch = redis.call('HGET', meta, 'e')
if not epoch then
  epoch = ARGV[4]
  redis.call('HSET', meta, 'e', epoch, 'o', 0)
  redis.call('DEL', hist)
  redis.call('PEXPIRE', meta, ARGV[5])
end
local latest = tonumber(redis.call('HGET', meta, 'o'))
redis.call('PUBLISH', ARGV[6], ARGV[7])
if ARGV[1] == '' then
  return {epoch, latest, -1, {}}
end
local t = redis.call('TIME')
local oldest = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) - tonumber(ARGV[3])
local function fresh(from)
  local out = {}
  local first = nil
  for _, e in ipairs(redis.call('XRANGE', hist, from, '+')) do
    local f = e[2]
    if tonumber(f[2]) >= oldest then
      if not first then first = tonumber(string.match(e[1], '^(%d+)')) end
      out[#out + 1] = f[4]
    end
  end
  return out, first
end
local since = tonumber(ARGV[1])
if ARGV[2] ~= epoch then
  local all = fresh('-')
  return {epoch, latest, 0, all}
end
if since > latest then
  return {epoch, latest, -2, {}}
end
if since == latest then
  return {epoch, latest, 1, {}}
end
local all, first = fresh('-')
if first and since + 1 >= first then
  local after = fresh(string.format('%d', since + 1) .. '-0')
  return {epoch, latest, 1, after}
end
return {epoch, latest, 0, all}
"""

RESET: Final = """
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[1], 'e', ARGV[1], 'o', 0)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""
