"""Production's HTTP routes: runs, the parking lot, chains, products and reprocessing (one router each)."""
