-- wrk script for the pqkms load harness (benches/load/run.py); used for pqkms and OpenBao alike.
--
-- The requests come from a spec file named by the environment variable LOAD_SPEC (written by
-- run.py, mode 0600: it holds tokens). One request per line, fields separated by TAB:
--
--   weight <TAB> method <TAB> path <TAB> headers <TAB> body
--
-- `headers` is "Name: value" pairs separated by the byte 0x1f (unit separator); `body` may be
-- empty. Each request() picks one line at random with probability weight / sum of weights (one
-- line: no randomness), so one script serves the single-operation scenarios, the mixed workload
-- and the scale mode's many-tenant sampling.
--
-- done() prints one line `LOADJSON {...}` with the counts and latency percentiles (microseconds)
-- that run.py parses. `non2xx` counts every answer whose status is not 2xx (wrk's own
-- errors.status only counts >= 400); `first_error` keeps the first such status and the start of
-- its body, so a failing run says why.

local threads = {}
local counter = 0

function setup(thread)
   counter = counter + 1
   thread:set("id", counter)
   table.insert(threads, thread)
end

local reqs = {}      -- prebuilt request strings
local cumulative = {} -- cumulative weights, same index
local total = 0
non2xx = 0
first_error = ""

local function split(s, sep)
   local out = {}
   local start = 1
   while true do
      local i = string.find(s, sep, start, true)
      if not i then
         table.insert(out, string.sub(s, start))
         return out
      end
      table.insert(out, string.sub(s, start, i - 1))
      start = i + #sep
   end
end

function init(args)
   local spec = os.getenv("LOAD_SPEC")
   if not spec then
      error("LOAD_SPEC is not set")
   end
   local f = assert(io.open(spec, "r"))
   for line in f:lines() do
      if line ~= "" then
         local fields = split(line, "\t")
         local weight = tonumber(fields[1])
         local method, path, hdrs, body = fields[2], fields[3], fields[4] or "", fields[5] or ""
         local headers = {}
         if hdrs ~= "" then
            for _, h in ipairs(split(hdrs, "\31")) do
               local colon = string.find(h, ":", 1, true)
               headers[string.sub(h, 1, colon - 1)] = string.gsub(string.sub(h, colon + 1), "^%s+", "")
            end
         end
         if body == "" then
            body = nil
         else
            headers["Content-Type"] = "application/json"
         end
         total = total + weight
         table.insert(reqs, wrk.format(method, path, headers, body))
         table.insert(cumulative, total)
      end
   end
   f:close()
   if #reqs == 0 then
      error("no request in " .. spec)
   end
   local id = wrk.thread:get("id") or 1
   math.randomseed(os.time() * 1000 + id * 7919)
end

function request()
   if #reqs == 1 then
      return reqs[1]
   end
   local r = math.random() * total
   -- Few lines in the mixed workload; many (one per sampled tenant, equal weights) in scale mode.
   if #reqs > 8 then
      local i = math.floor(r / total * #reqs) + 1
      if i > #reqs then i = #reqs end
      return reqs[i]
   end
   for i = 1, #reqs do
      if r < cumulative[i] then
         return reqs[i]
      end
   end
   return reqs[#reqs]
end

function response(status, headers, body)
   if status < 200 or status > 299 then
      non2xx = non2xx + 1
      if first_error == "" then
         first_error = tostring(status) .. " " .. string.sub(body or "", 1, 200)
      end
   end
end

local function json_string(s)
   s = string.gsub(s, '[%c"\\]', function(c)
      if c == '"' then return '\\"' end
      if c == "\\" then return "\\\\" end
      return string.format("\\u%04x", string.byte(c))
   end)
   return '"' .. s .. '"'
end

function done(summary, latency, requests)
   local n = 0
   local first = ""
   for _, t in ipairs(threads) do
      n = n + (t:get("non2xx") or 0)
      local fe = t:get("first_error") or ""
      if first == "" and fe ~= "" then
         first = fe
      end
   end
   local e = summary.errors
   local out = string.format(
      '{"requests": %d, "duration_us": %d, "bytes": %d, "non2xx": %d, ' ..
      '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
      '"latency_us": {"min": %d, "mean": %.1f, "max": %d, "p50": %d, "p90": %d, ' ..
      '"p99": %d, "p999": %d}, "first_error": %s}',
      summary.requests, summary.duration, summary.bytes, n,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency.min, latency.mean, latency.max,
      latency:percentile(50), latency:percentile(90),
      latency:percentile(99), latency:percentile(99.9),
      json_string(first))
   io.write("LOADJSON " .. out .. "\n")
end
