"""Local stand-ins for Apify and OpenAI that speak their real HTTP protocols."""
