"""The live half: `data-puller stream` (command.py) runs every live feed of data_puller.yaml.

Binance kline websockets (sources/binance_ws.py) and Twelve Data polling (sources/twelvedata_live.py)
feed micro-batches through the batch pipeline's own normalize, validation and router into the live
tables (`<feed>/live_ohlcv_<tf>`, layer `live`): streams get each batch, stores the day so far.
"""
