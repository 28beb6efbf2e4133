-- One wrk driver for every scenario of bench/run.py, configured by environment variables:
--
--   BENCH_PATH       request path
--   BENCH_METHOD     GET or POST (default; the body is form-encoded)
--   BENCH_BODY       body template; "{token}" is replaced by the next pool entry (URL-encoded)
--   BENCH_POOL       pool file prefix: thread N reads "<prefix>.N", one entry per line
--   BENCH_POOL_MODE  "once": every entry is used once, and the thread stops when its pool runs out
--                    (refresh and revoke: a reused refresh token would take the replay path);
--                    "cycle" (default): entries are reused round-robin
--   BENCH_EXPECT     a 200 response must contain this text, else it counts as an error
--   BENCH_CAPTURE    write "<access_token> <refresh_token>" of each 200 response to "<prefix>.N"
--   BENCH_QUOTA      with BENCH_CAPTURE: stop the thread after this many captured pairs
--   BENCH_DONE       when a thread stops early (pool used up, quota reached) it creates "<prefix>.N";
--                    bench/run.py then ends wrk with SIGINT, since wrk itself waits out its -d duration
--
-- done() prints one line "BENCH_RESULT {json}" that bench/run.py parses.

local path = os.getenv("BENCH_PATH") or "/oauth/token"
local method = os.getenv("BENCH_METHOD") or "POST"
local template = os.getenv("BENCH_BODY") or ""
local before, after = template, nil
local hole = template:find("{token}", 1, true)
if hole then
  before, after = template:sub(1, hole - 1), template:sub(hole + 7)
end
local pool_prefix = os.getenv("BENCH_POOL")
local once = os.getenv("BENCH_POOL_MODE") == "once"
local expect = os.getenv("BENCH_EXPECT")
local capture_prefix = os.getenv("BENCH_CAPTURE")
local quota = tonumber(os.getenv("BENCH_QUOTA") or "0")
local done_prefix = os.getenv("BENCH_DONE")
local headers = { ["Content-Type"] = "application/x-www-form-urlencoded" }

-- main state: number the threads so each reads and writes its own files
local threads = {}

function setup(thread)
  table.insert(threads, thread)
  thread:set("id", #threads)
end

-- thread state (globals, so that done() can read them with thread:get)
bad = 0
exhausted = 0
captured = 0
local pool = {}
local position = 0
local out = nil

local function stop()
  if done_prefix then
    local marker = io.open(done_prefix .. "." .. id, "w")
    if marker then
      marker:close()
    end
  end
  wrk.thread:stop()
end

local function urlencode(value)
  return (value:gsub("[^%w%-%._~]", function(c)
    return string.format("%%%02X", string.byte(c))
  end))
end

function init(args)
  if pool_prefix then
    for line in io.lines(pool_prefix .. "." .. id) do
      if #line > 0 then
        pool[#pool + 1] = urlencode(line)
      end
    end
    if #pool == 0 then
      error("empty pool " .. pool_prefix .. "." .. id)
    end
  end
  if capture_prefix then
    out = assert(io.open(capture_prefix .. "." .. id, "w"))
    out:setvbuf("line")
  end
end

function request()
  local body = template
  if pool_prefix then
    position = position + 1
    if position > #pool then
      if once then
        exhausted = 1
        stop()
        return wrk.format("GET", "/healthz")
      end
      position = 1
    end
    body = before .. pool[position] .. (after or "")
  end
  if method == "GET" then
    return wrk.format("GET", path)
  end
  return wrk.format("POST", path, headers, body)
end

function response(status, _, body)
  if exhausted == 1 then
    return
  end
  if status ~= 200 or (expect and not body:find(expect, 1, true)) then
    bad = bad + 1
    return
  end
  if out then
    local access = body:match('"access_token"%s*:%s*"([^"]+)"')
    local refresh = body:match('"refresh_token"%s*:%s*"([^"]+)"')
    if access and refresh then
      out:write(access, " ", refresh, "\n")
      captured = captured + 1
      if quota > 0 and captured >= quota then
        out:close()
        out = nil
        stop()
      end
    end
  end
end

function done(summary, latency, _)
  local totals = { bad = 0, exhausted = 0, captured = 0 }
  for _, thread in ipairs(threads) do
    for name, _ in pairs(totals) do
      totals[name] = totals[name] + (thread:get(name) or 0)
    end
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests": %d, "duration_us": %d, "bad": %d, "exhausted": %d, "captured": %d, '
      .. '"connect": %d, "read": %d, "write": %d, "timeout": %d, "status": %d, '
      .. '"p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d}\n',
    summary.requests, summary.duration, totals.bad, totals.exhausted, totals.captured,
    e.connect, e.read, e.write, e.timeout, e.status,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max
  ))
end
