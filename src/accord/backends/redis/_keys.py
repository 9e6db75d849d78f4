"""The Redis keys of a share and the Lua scripts that change them atomically.

Per share ``NAME`` (the ``{NAME}`` hash tag keeps them on one cluster slot)::

    accord:{NAME}:state   hash: p<slot>/a<slot> pending/applied write flags,
                          v:<name> "version generation is-value epoch" of
                          each committed object, c (commit counter: the
                          version of the last commit), epoch (raised by each
                          coordinator that takes the share), pos (the last
                          command reflected in the committed state),
                          q<client> (the last sequence number of that client
                          reflected in it), busy (the commands being applied:
                          "B|S attempts position"), n (client ids), check
                          (proves the key), pid, host
    accord:{NAME}:snap    hash: <name> -> signed pickled snapshot
    accord:{NAME}:cmd     stream: the commands, in the one order they are applied
    accord:{NAME}:lease   the coordinator's lease: its token, with a short TTL
    accord:{NAME}:r:<id>  list: replies to client <id>
"""

from __future__ import annotations

import hashlib
import urllib.parse

import redis
import redis.exceptions


class Keys:
    __slots__ = ("cmd", "lease", "prefix", "snap", "state")

    def __init__(self, name: str) -> None:
        self.prefix = f"accord:{{{name}}}:"
        self.state = self.prefix + "state"
        self.snap = self.prefix + "snap"
        self.cmd = self.prefix + "cmd"
        self.lease = self.prefix + "lease"

    def replies(self, client_id: int) -> str:
        return f"{self.prefix}r:{client_id}"


class Script:
    """A Lua script run by EVALSHA, loaded again if the server lost it (a
    restart).  Leaner than redis-py's Script: this is on every write's path."""

    __slots__ = ("sha", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    def __call__(self, r: redis.Redis, nkeys: int, *keys_and_args):
        try:
            return r.execute_command("EVALSHA", self.sha, nkeys, *keys_and_args)
        except redis.exceptions.NoScriptError:  # nothing ran: safe to run again
            r.script_load(self.source)
            return r.execute_command("EVALSHA", self.sha, nkeys, *keys_and_args)


def split_url(url: str) -> tuple[str, dict[str, float]]:
    """(the URL for redis-py, accord's own options `ttl` and `timeout`)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ValueError(f"not a Redis URL: {url!r} (redis://, rediss:// or unix://)")
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    ours = {k: float(v) for k, v in query if k in ("ttl", "timeout")}
    # accord speaks RESP2 (the replies' shapes differ in RESP3): drop ?protocol=.
    rest = urllib.parse.urlencode([(k, v) for k, v in query if k not in ours and k != "protocol"])
    return urllib.parse.urlunsplit(parts._replace(query=rest)), ours


def safe_url(url: str) -> str:
    """The URL without its password, for messages."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:***@" if parts.username else "***@"
    return urllib.parse.urlunsplit(parts._replace(netloc=user + netloc))


# A client queues a command: its write flags are raised and the command is
# appended to the stream in one step, so the stream order agrees with every
# flag.  ARGV: the signed command, and "READS;WRITES" (slots, comma-separated).
# The entry is "WAITS;COMMAND": for each slot read, its pending count before
# this command, and for the first slot written, the count before its own raise.
# Returns 1, or 0 if the share is gone, -1 if it has no coordinator (the one
# holding the lease gives the stream its TTL at its next beat).
SEND = """
if redis.call('EXISTS', KEYS[3]) == 0 then
  if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
  return -1
end
local spec = ARGV[2]
local sep = string.find(spec, ';', 1, true)
local waits = {}
for slot in string.gmatch(string.sub(spec, 1, sep - 1), '%d+') do
  waits[#waits + 1] = slot
  waits[#waits + 1] = redis.call('HGET', KEYS[1], 'p' .. slot) or '0'
end
local first = true
for slot in string.gmatch(string.sub(spec, sep + 1), '%d+') do
  local v = redis.call('HINCRBY', KEYS[1], 'p' .. slot, 1)
  if first then
    waits[#waits + 1] = slot
    waits[#waits + 1] = tostring(v - 1)
    first = false
  end
end
redis.call('XADD', KEYS[2], '*', 'd', table.concat(waits, ',') .. ';' .. ARGV[1])
return 1
"""

# A reader's snapshot of `name`: {entry, data}; data only if the version in
# the entry differs from the one the reader holds.
READ = """
local e = redis.call('HGET', KEYS[1], 'v:' .. ARGV[1])
if not e then return {false, false} end
if string.match(e, '^%d+') == ARGV[2] then return {e, false} end
return {e, redis.call('HGET', KEYS[2], ARGV[1])}
"""

# The coordinator commits: snapshots, deletions, each client's last applied
# sequence number, applied flags and the stream position, all at once — only
# while it still holds the share (its epoch is current).  The coordinator
# numbers its commits itself (it signs each snapshot with its version).
# ARGV: epoch, position, version, n, (name, kind, data)*n, m, name*m,
# k, (client, sequence)*k, (slot, applied)*.
COMMIT = """
if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[1] then return 0 end
local c = ARGV[3]
redis.call('HSET', KEYS[1], 'c', c)
local i = 5
for _ = 1, tonumber(ARGV[4]) do
  redis.call('HSET', KEYS[1], 'v:' .. ARGV[i], c .. ' ' .. ARGV[i + 1] .. ' ' .. ARGV[1])
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 2])
  i = i + 3
end
local m = tonumber(ARGV[i])
i = i + 1
for _ = 1, m do
  redis.call('HDEL', KEYS[1], 'v:' .. ARGV[i])
  redis.call('HDEL', KEYS[2], ARGV[i])
  i = i + 1
end
local k = tonumber(ARGV[i])
i = i + 1
for _ = 1, k do
  redis.call('HSET', KEYS[1], 'q' .. ARGV[i], ARGV[i + 1])
  i = i + 2
end
while i < #ARGV do
  redis.call('HSET', KEYS[1], 'a' .. ARGV[i], ARGV[i + 1])
  i = i + 2
end
if ARGV[2] ~= '' then
  redis.call('HSET', KEYS[1], 'pos', ARGV[2])
  redis.call('XTRIM', KEYS[3], 'MINID', ARGV[2])
end
if redis.call('PTTL', KEYS[2]) == -1 then
  local ttl = redis.call('PTTL', KEYS[1])
  if ttl > 0 then redis.call('PEXPIRE', KEYS[2], ttl) end
end
return 1
"""

# A coordinator takes the share: the lease if free, and a new epoch.
# Returns the epoch, -1 if another holds the lease, -2 if there is no share.
ACQUIRE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -2 end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  redis.call('HSET', KEYS[1], 'pid', ARGV[3], 'host', ARGV[4])
  return redis.call('HINCRBY', KEYS[1], 'epoch', 1)
end
return -1
"""

# The coordinator's heartbeat: renew the lease (or take it back after Redis
# lost it, if nobody took the share meanwhile) and the keys' TTL.
# Returns 1, 0 if the share was deleted, -1 if another coordinator took it.
BEAT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[2] then return -1 end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[3])
for i = 3, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then redis.call('PEXPIRE', KEYS[i], ARGV[4]) end
end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
"""

# Give the lease back (a coordinator that stops), if it is still ours.
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
