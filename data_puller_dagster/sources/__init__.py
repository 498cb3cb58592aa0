"""Provider adapters: (symbol, timeframe, UTC range) -> raw DataFrame exactly as the provider sent it."""
