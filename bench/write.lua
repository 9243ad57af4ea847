-- Audited writes for wrk: create an API key, then revoke it, alternating per connection thread.
local token = os.getenv("MAASBOX_BENCH_TOKEN")
local pending = {}

request = function()
  local id = table.remove(pending)
  if id then
    return wrk.format("DELETE", "/api/v1/keys/" .. id, { ["Authorization"] = "Bearer " .. token })
  end
  return wrk.format("POST", "/api/v1/keys",
    { ["Authorization"] = "Bearer " .. token, ["Content-Type"] = "application/json" },
    '{"name":"bench"}')
end

response = function(status, headers, body)
  if status == 201 then
    local id = body:match('"id":"(%x+)"')
    if id then table.insert(pending, id) end
  elseif status ~= 204 then
    io.stderr:write("unexpected status " .. status .. "\n")
  end
end
