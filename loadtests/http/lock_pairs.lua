-- Uncontended lock acquire + release pairs. Run with one connection per thread (-t N -c N):
-- wrk calls a thread's request() after its response(), so each connection can chain
-- acquire -> (lease_id from the answer) -> release. Each thread cycles over its own names.
-- wrk ... -s lock_pairs.lua URL -- NAMESPACE NAMES
dofile("report.lua")
counters = {"pairs_done", "failed"}

local headers = {["Content-Type"] = "application/json"}
local acquire_body = '{"ttl_ms":10000}'
local base, names, i, lease

function init(args)
   base = "/v1/namespaces/" .. (args[1] or "bench-locks") .. "/locks/job-" .. id .. "-"
   names = tonumber(args[2] or "100")
   i = 0
   pairs_done, failed = 0, 0
end

function request()
   local path = base .. (i % names)
   if lease == nil then
      return wrk.format("POST", path .. "/acquire", headers, acquire_body)
   end
   return wrk.format("POST", path .. "/release", headers, '{"lease_id":"' .. lease .. '"}')
end

function response(status, _, answer)
   if lease == nil then
      if status == 200 then
         lease = answer:match('"lease_id":"([^"]+)"')
      end
      if lease == nil then
         failed = failed + 1
         i = i + 1
      end
   else
      if status == 200 then
         pairs_done = pairs_done + 1
      else
         failed = failed + 1
      end
      lease = nil
      i = i + 1
   end
end
