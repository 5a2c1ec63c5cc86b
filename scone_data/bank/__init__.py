"""The subject bank: its records (:mod:`.records`), its parts on disk (:mod:`.store`), the planning
index over it (:mod:`.index`) and planning by partition (:mod:`.partition`)."""
