-- SWUpdate Lua handler for adaptivenet bundles (example).
-- Install as /etc/swupdate_handlers.lua (or append to yours; SWUpdate built
-- with CONFIG_LUA and CONFIG_EMBEDDED_LUA_HANDLER or the handler file path).
-- An image of `type = "adaptivenet"` in sw-description is copied to a temp
-- file and handed to adaptivenet-install, which drops it into adaptived's
-- folder (NAME.part, rename), waits until /v2/models/NAME/adaptation shows
-- it serving or rejected, and rolls back on failure (the previous bundle
-- keeps serving). Its stderr (the daemon's reason) goes to SWUpdate's log.
require("swupdate")

-- ADAPTIVENET_INSTALL in SWUpdate's environment overrides the path.
local INSTALL = os.getenv("ADAPTIVENET_INSTALL") or "/usr/libexec/adaptivenet/adaptivenet-install"

local function adaptivenet_handler(image)
    local tmp = os.tmpname()
    local err, msg = image:copy2file(tmp)
    if err ~= 0 then
        swupdate.error("adaptivenet: cannot copy " .. image.filename .. ": " .. tostring(msg))
        os.remove(tmp)
        return 1
    end
    swupdate.info("adaptivenet: installing " .. image.filename)
    local ok, how, code = os.execute(INSTALL .. " " .. tmp .. " 2>&1")
    os.remove(tmp)
    -- Lua 5.1 returns the status; 5.2+ returns true/nil, "exit", code.
    if ok == true or ok == 0 then
        swupdate.info("adaptivenet: " .. image.filename .. " serves")
        return 0
    end
    swupdate.error("adaptivenet: " .. image.filename .. " was not installed (exit " .. tostring(code or ok) .. ")")
    return 1
end

swupdate.register_handler("adaptivenet", adaptivenet_handler, swupdate.HANDLER_MASK.IMAGE_HANDLER)
