-- signalgate bench: what each wrk connection sends, and the one JSON line the bench reads back.
--
-- Configured through the environment by `signalgate bench` (wrk passes it on):
--   SG_BENCH_PATH       the request path (default "/")
--   SG_BENCH_KEYS       a file of client identities, one per line: the key, then optionally more header
--                       fields separated by tabs ("KEY\tX-Attestation: eyJ...\tX-Task-Scope: read").
--                       Those extra fields are the hook for attestation and context headers: they are
--                       sent with that key on every request that uses the line. Lines are used in turn,
--                       each thread starting at its own slice. Unset: no key at all.
--   SG_BENCH_HEADER     the header that carries the key (default X-API-Key)
--   SG_BENCH_ADDRESSES  a file of client addresses, one per line, sent as X-Forwarded-For (wrk cannot
--                       bind source addresses; the proxy must trust the bench's hop). Each identity keeps
--                       the address it was first given. Unset: no X-Forwarded-For.
--   SG_BENCH_DELAY_MS   a pause before each request on a connection (--rate); 0 or unset for none
--   SG_BENCH_THREADS    wrk's --threads, to slice the identities
--
-- Answers are counted by status per thread in response(); done() prints one line,
-- "SG_BENCH_RESULT {json}", with those counts, the socket errors and the latency percentiles.

local function read_lines(path)
  local out = {}
  if path == nil or path == "" then return out end
  for line in io.lines(path) do
    if line ~= "" then out[#out + 1] = line end
  end
  return out
end

local function split_tabs(line)
  local fields = {}
  for field in string.gmatch(line, "[^\t]+") do fields[#fields + 1] = field end
  return fields
end

local threads = {}
local made = 0

function setup(thread)
  thread:set("thread_number", made)
  made = made + 1
  threads[#threads + 1] = thread
end

local identities, addresses, built = {}, {}, {}
local position, handed = 0, 0
local header_name = os.getenv("SG_BENCH_HEADER") or "X-API-Key"
local path = os.getenv("SG_BENCH_PATH") or "/"
local plain = nil  -- with no identities: one request per address (or a single one), in turn

counts = {}  -- status -> answers, per thread (read back in done)

function init(args)
  identities = read_lines(os.getenv("SG_BENCH_KEYS"))
  addresses = read_lines(os.getenv("SG_BENCH_ADDRESSES"))
  local count = tonumber(os.getenv("SG_BENCH_THREADS") or "1")
  position = math.floor((thread_number or 0) * #identities / count)
  if #identities == 0 then
    plain = {}
    for i = 1, math.max(#addresses, 1) do
      local headers = {}
      if #addresses > 0 then headers["X-Forwarded-For"] = addresses[i] end
      plain[i] = wrk.format("GET", path, headers)
    end
  end
end

local function build(line)
  local fields = split_tabs(line)
  local headers = {[header_name] = fields[1]}
  for i = 2, #fields do
    local name, value = string.match(fields[i], "^([^:]+):%s*(.*)$")
    if name then headers[name] = value end
  end
  if #addresses > 0 then
    handed = handed + 1
    headers["X-Forwarded-For"] = addresses[(handed - 1) % #addresses + 1]
  end
  return wrk.format("GET", path, headers)
end

function request()
  if plain then
    position = position % #plain + 1
    return plain[position]
  end
  position = position % #identities + 1
  local line = identities[position]
  local req = built[line]
  if req == nil then
    req = build(line)
    built[line] = req
  end
  return req
end

function response(status, headers, body)
  counts[status] = (counts[status] or 0) + 1
end

local pause = tonumber(os.getenv("SG_BENCH_DELAY_MS") or "0") or 0
if pause > 0 then
  function delay() return pause end
end

local grid = {1, 5, 10, 25, 50, 75, 90, 95, 97.5, 99, 99.5, 99.9, 99.95, 99.99}

function done(summary, latency, requests)
  local total = {}
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("counts") or {}) do total[status] = (total[status] or 0) + n end
  end
  local statuses = {}
  for status, n in pairs(total) do statuses[#statuses + 1] = string.format('"%d":%.0f', status, n) end
  local points = {}
  for _, p in ipairs(grid) do
    points[#points + 1] = string.format('["%s",%.1f]', tostring(p), latency:percentile(p))
  end
  points[#points + 1] = string.format('["100",%.1f]', latency.max)
  local e = summary.errors
  io.write(string.format(
    'SG_BENCH_RESULT {"requests":%.0f,"duration_us":%.0f,"statuses":{%s},' ..
    '"connect_errors":%.0f,"read_errors":%.0f,"write_errors":%.0f,"timeouts":%.0f,' ..
    '"mean_us":%.1f,"percentiles_us":[%s]}\n',
    summary.requests, summary.duration, table.concat(statuses, ","),
    e.connect, e.read, e.write, e.timeout, latency.mean, table.concat(points, ",")))
end
