-- etcd 3.4 lock + unlock through its HTTP/JSON gRPC gateway, one connection per thread
-- (-t N -c N) so calls chain: one lease per connection (POST /v3/lease/grant, as etcdctl's
-- session does), then POST /v3/lock/lock {name, lease} -> key, POST /v3/lock/unlock {key}.
-- wrk ... -s etcd_lock_pairs.lua URL -- NAMES
dofile("report.lua")
counters = {"pairs_done", "failed"}

local headers = {["Content-Type"] = "application/json"}
local alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

local function base64(text)
   local out = {}
   for p = 1, #text, 3 do
      local a, b, c = text:byte(p, p + 2)
      local n = a * 65536 + (b or 0) * 256 + (c or 0)
      local chars = {}
      for k = 3, 0, -1 do
         local v = math.floor(n / 64 ^ k) % 64
         table.insert(chars, alphabet:sub(v + 1, v + 1))
      end
      if not b then chars[3], chars[4] = "=", "=" elseif not c then chars[4] = "=" end
      table.insert(out, table.concat(chars))
   end
   return table.concat(out)
end

local names, encoded, i, lease, key = 100, {}, 0, nil, nil

function init(args)
   names = tonumber(args[1] or "100")
   for n = 0, names - 1 do
      encoded[n] = base64("bench/job-" .. id .. "-" .. n)
   end
   pairs_done, failed = 0, 0
end

function request()
   if lease == nil then
      return wrk.format("POST", "/v3/lease/grant", headers, '{"TTL":60}')
   elseif key == nil then
      return wrk.format("POST", "/v3/lock/lock", headers,
         '{"name":"' .. encoded[i % names] .. '","lease":"' .. lease .. '"}')
   end
   return wrk.format("POST", "/v3/lock/unlock", headers, '{"key":"' .. key .. '"}')
end

function response(status, _, answer)
   if lease == nil then
      lease = status == 200 and answer:match('"ID":"?(%d+)') or nil
      if lease == nil then failed = failed + 1 end
   elseif key == nil then
      key = status == 200 and answer:match('"key":"([^"]+)"') or nil
      if key == nil then
         failed = failed + 1
         i = i + 1
      end
   else
      if status == 200 then pairs_done = pairs_done + 1 else failed = failed + 1 end
      key = nil
      i = i + 1
   end
end
