"""A NEPSE-style stock-movement model, as the deployment guides train it: XGBoost on four
features of a trading day (open, high, low, volume), predicting whether the close is above the
open, saved with joblib. The prices are synthetic (a random walk around NEPSE index levels) and
the seed is fixed, so every run writes the same models.

    python train.py

Writes, in the current directory:
  nepse_model.pkl      version 1 (joblib.dump of an XGBClassifier: what MODEL_PATH names)
  nepse_model_v2.pkl   version 2 (more and deeper trees)
  holdout.csv          500 held-out days with the label column `up`
  row.json             one day, as /v1/predict takes it
"""

import json

import joblib
import numpy as np
import pandas as pd
from xgboost import XGBClassifier

rng = np.random.default_rng(2081)
days = 4000
close = 2000 + np.cumsum(rng.normal(0, 12, days))
opening = close + rng.normal(0, 8, days)
high = np.maximum(opening, close) + np.abs(rng.normal(0, 10, days))
low = np.minimum(opening, close) - np.abs(rng.normal(0, 10, days))
volume = np.abs(rng.normal(3.5e9, 1.2e9, days))
frame = pd.DataFrame({"open": opening, "high": high, "low": low, "volume": volume})
# Tomorrow's close above today's open, with the range and the volume as weak signals.
signal = (high - opening) - (opening - low) + 2e-9 * (volume - 3.5e9) + rng.normal(0, 6, days)
frame["up"] = (signal > 0).astype(int)

features = ["open", "high", "low", "volume"]
train, held = frame.iloc[:3500], frame.iloc[3500:]
v1 = XGBClassifier(n_estimators=60, max_depth=3, learning_rate=0.1, random_state=0)
v1.fit(train[features].to_numpy(), train["up"])
joblib.dump(v1, "nepse_model.pkl")
v2 = XGBClassifier(n_estimators=150, max_depth=5, learning_rate=0.08, random_state=0)
v2.fit(train[features].to_numpy(), train["up"])
joblib.dump(v2, "nepse_model_v2.pkl")

held.to_csv("holdout.csv", index=False, float_format="%.4f")
with open("row.json", "w") as f:
    json.dump({"features": [[round(float(v), 4) for v in held[features].iloc[0]]]}, f)
for name, model in (("version 1", v1), ("version 2", v2)):
    accuracy = (model.predict(held[features].to_numpy()) == held["up"]).mean()
    print(f"{name}: accuracy {accuracy:.3f} on {len(held)} held-out days")
