"""PI/KPI and SLO definitions, Prometheus metrics and rules, KPI computation, SLA reports."""
