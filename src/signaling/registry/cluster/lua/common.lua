-- Shared by every script. ARGV[1] is the key prefix, ARGV[2] the calling instance's id.
-- Keys (all under the prefix):
--   inst:<id>        the instance's lease (a TTL key, renewed by its heartbeat)
--   inst:<id>:users  the names it holds; inst:<id>:calls the ones of those in a call
--   instances        every instance id that may still hold names
--   user:<name>      hash: inst, sid (its session), fk (its name's key: case-folded, NFC;
--                    folded by the instance, since Lua cannot), tok (the digest of its
--                    reconnect token, see token.lua), ver (raised on every change of its call),
--                    and while in a call peer and state (calling, ringing, active; or
--                    resuming: waiting for peer to ask to resume too, see resume.lua)
--   fold:<key>       the name holding that key, so "Bob" is refused while "bob" is logged
--                    in, and a call to "BOB" reaches bob
--   presence:<id>    the instance's users for the presence list (a TTL key, see presence.lua)
--   ch:<id>          the instance's pub/sub channel
-- Names never contain a newline (they have no control characters), so envelopes are
-- newline-separated: kind, to, its session id, from, from's instance, from's session id, the
-- version of to's record after the change ('0' when nothing changed), frame. An instance
-- applies a change to its copy of a record only when the version is newer than its copy's,
-- so replies and messages that race each other cannot leave the copy behind.
local P, ME = ARGV[1], ARGV[2]
-- Milliseconds the partner of a user whose instance died or stopped waits for them to come
-- back and resume (see resume.lua); 0 ends the call at once. Set by the scripts that free a
-- vanished instance's names (CLAIM, REAP).
local HOLD = 0

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function ukey(name) return P .. 'user:' .. name end
local function ikey(inst) return P .. 'inst:' .. inst end
local function fkey(key) return P .. 'fold:' .. key end

-- The name a user typed (`typed`, with its key `key`) stands for: the one holding the key,
-- or, when none does, the name as typed.
local function resolve(typed, key)
  return redis.call('GET', fkey(key)) or typed
end

local function alive(inst)
  return inst and redis.call('EXISTS', ikey(inst)) == 1
end

local function record(name)
  local r = redis.call('HMGET', ukey(name), 'inst', 'sid', 'peer', 'state')
  if not r[1] then return nil end
  return {inst = r[1], sid = r[2], peer = r[3], state = r[4]}
end

-- Each returns the record's new version.
local function set_call(name, inst, peer, state)
  redis.call('HSET', ukey(name), 'peer', peer, 'state', state)
  redis.call('HDEL', ukey(name), 'until')
  redis.call('SADD', ikey(inst) .. ':calls', name)
  return redis.call('HINCRBY', ukey(name), 'ver', 1)
end

local function set_state(name, state)
  redis.call('HSET', ukey(name), 'state', state)
  return redis.call('HINCRBY', ukey(name), 'ver', 1)
end

local function clear_call(name, inst)
  redis.call('HDEL', ukey(name), 'peer', 'state', 'until')
  redis.call('SREM', ikey(inst) .. ':calls', name)
  return redis.call('HINCRBY', ukey(name), 'ver', 1)
end

local function version(name)
  return redis.call('HGET', ukey(name), 'ver') or '0'
end

local function send(inst, kind, to, sid, from, from_inst, from_sid, ver, frame)
  redis.call('PUBLISH', P .. 'ch:' .. inst, table.concat(
    {kind, to, sid, from, from_inst, from_sid, ver, frame}, '\n'))
end

-- Ends the call of `name` (record `rec`) on its partner's side, and tells the partner's
-- instance unless that is `quiet` (an instance that tells its own users itself).
-- A side that was only waiting to resume a call ('resuming') has no partner to tell.
local function end_partner(name, rec, quiet)
  if not rec.peer or rec.state == 'resuming' then return end
  local theirs = record(rec.peer)
  if theirs and theirs.peer == name then
    if HOLD > 0 and theirs.state == 'active' and theirs.inst ~= quiet and alive(theirs.inst) then
      -- The partner waits for `name` to log in again (anywhere) and resume; the partner's
      -- instance ends the wait after HOLD ms (HEARTBEAT).
      redis.call('HSET', ukey(rec.peer), 'state', 'resuming', 'until', now_ms() + HOLD)
      local ver = redis.call('HINCRBY', ukey(rec.peer), 'ver', 1)
      send(theirs.inst, 'hold', rec.peer, theirs.sid, name, rec.inst, rec.sid, ver, '')
      return
    end
    local ver = clear_call(rec.peer, theirs.inst)
    if theirs.inst ~= quiet and alive(theirs.inst) then
      send(theirs.inst, 'gone', rec.peer, theirs.sid, name, rec.inst, rec.sid, ver, '')
    end
  end
end

-- Drops the user's record and its key, unless another name holds the key by now.
local function forget(name)
  local key = redis.call('HGET', ukey(name), 'fk')
  if key and redis.call('GET', fkey(key)) == name then redis.call('DEL', fkey(key)) end
  redis.call('DEL', ukey(name))
end

local function remove(name, rec)
  forget(name)
  redis.call('SREM', ikey(rec.inst) .. ':users', name)
  redis.call('SREM', ikey(rec.inst) .. ':calls', name)
end
