"""Every side effect of an analysis run: credits, cache, scraping, AI and storing results."""
