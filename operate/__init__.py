"""`orderstream`: the operator's command (replay, redrive, smoke), for AWS and the local stack."""
