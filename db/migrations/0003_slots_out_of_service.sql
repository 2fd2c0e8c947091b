-- Every placement batch reads the network's stamp under its locks (db/queries/network.py,
-- STAMP_COLUMNS), which lists the slots out of service: without this index that read goes
-- through every slot of the network (0.4 ms a batch at 5,000 slots), with it through the few
-- taken out.
create index slots_out_of_service on slots (cabinet_id, label) where not enabled and not retired;
