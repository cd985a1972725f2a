"""Running training jobs: the orchestrated loop (`loop`), its hooks (`hooks`) and checkpoint
listeners (`listeners`), the model directory between runs (`model_dir`), clean stops
(`signals`), environment failures (`failures`), TF_CONFIG and strategies (`cluster`), and a
local-cluster launcher (`launcher`)."""
