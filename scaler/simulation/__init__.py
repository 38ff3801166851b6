"""`taskqueue-scaler simulate` and `backtest`: scaling rules tried before they run."""
