"""Why errors happen: driver rules, fine-grained rules, the diagnosis step and summary, distractors."""
