"""The Redis streams destination's server-side scripts (Lua, run with EVALSHA: sent once per server).

Why scripts: they return only what the destination needs (a stream's last id, not XINFO's whole reply)
and do a live micro-batch's XADDs in one atomic call, instead of redis-py packing and parsing one
command per candle. Every key a script touches is declared in KEYS.
"""

from __future__ import annotations

import re

# Per key: "" (no such key), "type:<type>" (not a stream) or the stream's last-generated-id.
LAST_IDS = """
local out = {}
for i, key in ipairs(KEYS) do
  local t = redis.call('TYPE', key)['ok']
  if t == 'none' then out[i] = ''
  elseif t ~= 'stream' then out[i] = 'type:' .. t
  else
    local info = redis.call('XINFO', 'STREAM', key)
    for j = 1, #info, 2 do
      if info[j] == 'last-generated-id' then out[i] = info[j + 1] end
    end
  end
end
return out
"""

# Live micro-batches (see RedisStreamDestination._xadd_live). ARGV[1]: MAXLEN ("" for none), then per
# entry 4 values: KEYS index, entry id (<ms>-0, or * for a generated one), the message id, the payload.
# Returns {published with explicit ids, refused as already there, published with generated ids}.
LIVE_XADD = """
for _, key in ipairs(KEYS) do
  local t = redis.call('TYPE', key)['ok']
  if t ~= 'none' and t ~= 'stream' then return redis.error_reply('DPWRONGTYPE ' .. key .. ' ' .. t) end
end
local maxlen = ARGV[1]
local published, refused, generated = 0, 0, 0
for i = 2, #ARGV, 4 do
  local key, eid = KEYS[tonumber(ARGV[i])], ARGV[i + 1]
  local res
  if maxlen == '' then
    res = redis.pcall('XADD', key, eid, 'id', ARGV[i + 2], 'data', ARGV[i + 3])
  else
    res = redis.pcall('XADD', key, 'MAXLEN', '~', maxlen, eid, 'id', ARGV[i + 2], 'data', ARGV[i + 3])
  end
  if type(res) == 'table' and res.err then
    if eid ~= '*' and string.find(res.err, 'equal or smaller', 1, true) then refused = refused + 1
    else return redis.error_reply('DPXADD ' .. res.err) end
  elseif eid == '*' then generated = generated + 1
  else published = published + 1 end
end
return {published, refused, generated}
"""
# What a server says when this user may not run scripts (ACL) or scripting is disabled.
SCRIPTING_REFUSED = re.compile(r"no permissions|NOPERM|unknown command|scripting", re.IGNORECASE)
