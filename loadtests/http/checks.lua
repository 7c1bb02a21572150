-- Single rate-limit checks on keys drawn uniformly from `keys`.
-- wrk ... -s checks.lua URL -- NAMESPACE KEYS
dofile("report.lua")
counters = {"ok", "denied", "failed"}

local headers = {["Content-Type"] = "application/json"}
local body = '{"limit":1000,"period_ms":60000,"algorithm":"fixed_window"}'
local prefix, keys

function init(args)
   prefix = "/v1/namespaces/" .. (args[1] or "bench-checks") .. "/ratelimits/key-"
   keys = tonumber(args[2] or "10000")
   math.randomseed(1000 + id)
   ok, denied, failed = 0, 0, 0
end

function request()
   return wrk.format("POST", prefix .. math.random(0, keys - 1) .. "/check", headers, body)
end

function response(status, _, answer)
   if status ~= 200 then
      failed = failed + 1
   elseif answer:find('"allowed":true', 1, true) then
      ok = ok + 1
   else
      denied = denied + 1
   end
end
