-- RELEASE: ARGV[3] name, ARGV[4] session id. Compare-and-delete: only that session's record
-- goes, never a newer login under the same name. A remote partner is told.
local rec = record(ARGV[3])
if not rec or rec.inst ~= ME or rec.sid ~= ARGV[4] then return 0 end
end_partner(ARGV[3], rec, ME)
remove(ARGV[3], rec)
return 1
