"""modelgates-relay: polls ModelGates video jobs and pushes signed webhooks."""
