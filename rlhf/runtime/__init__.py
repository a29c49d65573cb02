"""Runtime (floor 5): the controller (one run, top to bottom), the pipeline that drives stages (produce ->
consume), the stages built from components by the objective's capabilities, and the sync coordinator that moves
weights from the trainers to the engines (imports Ray lazily)."""
