"""The MLflow pyfunc of a registered avser model, logged as "models from code".

MLflow copies this file into the model and runs it at load time instead of
unpickling an object. It rebuilds the network from the model's plain-data
bundle (state dict, model and feature config, label names; read with
``torch.load(weights_only=True)``): ``{input name: array}`` in, logits out.
``model_config={"device": "cuda"}`` at load time runs it on a GPU.
"""

from __future__ import annotations

import mlflow
import numpy as np
import torch

from avser.bundle import BUNDLE_ARTIFACT

DEFAULT_DEVICE = "cpu"


class AvserPyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from avser.bundle import load_bundle
        from avser.models.factory import SPEECH

        self.device = torch.device((context.model_config or {}).get("device", DEFAULT_DEVICE))
        self.bundle = load_bundle(context.artifacts[BUNDLE_ARTIFACT])
        self.network = self.bundle.network().to(self.device)
        self.input_names = (["speech"] if self.bundle.kind == SPEECH
                            else ["speech", "faces", "landmarks", "visual_mask"])

    # No type hints: MLflow cannot build a schema from dict[str, ndarray] hints
    # (it warns about their absence instead); the logged signature checks inputs.
    def predict(self, context, model_input, params=None):
        from avser.errors import AvserError

        missing = [name for name in self.input_names if name not in model_input]
        if missing:
            raise AvserError(f"model input lacks {missing}; it takes {self.input_names}")
        tensors = {name: torch.as_tensor(np.asarray(model_input[name]), device=self.device)
                   for name in self.input_names}
        with torch.no_grad():
            output = self.network(**tensors)
        logits = output[0] if isinstance(output, (tuple, list)) else output
        return logits.float().cpu().numpy()


mlflow.models.set_model(AvserPyfunc())
