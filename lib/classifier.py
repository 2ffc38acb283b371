"""Big-Five text classifier: scores journal entries for JIC filtering and generated text for every evaluation.

Two backends share one interface (fit / predict_proba / predict / save / load):
- "embedding_logreg" (cpu and tiny profiles): frozen sentence embeddings from lib.embed, one scikit-learn
  LogisticRegression per trait. Cheap and deterministic. With `long_texts`, a text is embedded as the mean of its
  windows of max_seq_length tokens (lib.embed.embed_long) instead of its first window only: an Essays text is
  ~650 words, three to four windows. With a list of C values, each trait's C is chosen by cross-validation on the
  training texts; with `calibrate`, each trait's decision threshold is set on a validation share of them.
- "finetune" (paper setting): JIC fine-tunes an encoder on PANDORA as a 5-way multi-label problem (label = trait
  score > 40, decision threshold 0.4, lr 2e-5, batch 16, 5 epochs) with AutoModelForSequenceClassification and
  the transformers Trainer. Texts are cut at max_seq_length or at the encoder's own limit, whichever is smaller:
  microsoft/deberta-large's repo sets no model_max_length and its relative positions accept any length without an
  error, so nothing else would stop a 1,000-token text (lib.embed.max_input_tokens).
Labels are n x 5 arrays (or DataFrames with columns TRAITS) of 0/1 in the order TRAITS = O, C, E, A, N.
`evaluate_classifier` reports per-trait accuracy, macro F1 and the majority-class baseline; PUBLISHED_ESSAYS holds
the reference level we compare Essays accuracy against.
"""
from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import numpy as np

from lib.traits import TRAITS

ROOT = Path(__file__).resolve().parents[1]

log = logging.getLogger(__name__)

BACKENDS = ("embedding_logreg", "finetune")
FEATURES = ("embedding", "tfidf", "embedding+tfidf")  # what the embedding_logreg backend's regressions read

# Reference level for Essays (Pennebaker & King), taken from the JIC issue statement: "about 56-60% mean accuracy
# for encoder models". Binary per-trait labels; majority baseline is about 50-54% per trait.
PUBLISHED_ESSAYS = {
    "mean_accuracy_low": 0.56,
    "mean_accuracy_high": 0.60,
    "note": "Essays, encoder-based Big-Five classifiers: about 56-60% mean accuracy for encoder models "
            "(source: JIC issue statement; approximate, not a single published table).",
}


def as_label_matrix(labels, n: int | None = None) -> np.ndarray:
    """Turn a DataFrame (columns TRAITS) or array of 0/1 into an int (n, 5) matrix, rejecting anything else."""
    import pandas as pd

    if isinstance(labels, pd.DataFrame):
        missing = [t for t in TRAITS if t not in labels.columns]
        if missing:
            raise ValueError(f"label DataFrame lacks trait columns {missing}; has {list(labels.columns)}")
        labels = labels[list(TRAITS)].to_numpy()
    y = np.asarray(labels)
    if y.ndim != 2 or y.shape[1] != len(TRAITS):
        raise ValueError(f"labels must be (n, {len(TRAITS)}), got shape {y.shape}")
    if n is not None and len(y) != n:
        raise ValueError(f"{len(y)} label rows for {n} texts")
    bad = ~np.isin(y, (0, 1))
    if bad.any():
        rows = sorted(set(np.nonzero(bad)[0].tolist()))[:10]
        raise ValueError(f"labels must be 0/1; rows with other values: {rows}")
    return y.astype(int)


def labels_from_scores(scores, cutoff: float = 40.0) -> np.ndarray:
    """PANDORA-style binarisation used by JIC: a trait is high when its 0-100 score is > cutoff."""
    s = np.asarray(scores, dtype=float)
    if np.isnan(s).any():
        raise ValueError(f"trait scores contain NaN in rows {sorted(set(np.nonzero(np.isnan(s))[0].tolist()))[:10]}")
    return (s > cutoff).astype(int)


class _TextDataset:
    """Tokenised texts (+ float multi-label targets) for the transformers Trainer."""

    def __init__(self, enc: dict, labels: np.ndarray | None = None):
        self.enc, self.labels = enc, labels

    def __len__(self) -> int:
        return len(self.enc["input_ids"])

    def __getitem__(self, i: int) -> dict:
        item = {k: v[i] for k, v in self.enc.items()}
        if self.labels is not None:
            item["labels"] = [float(x) for x in self.labels[i]]
        return item


class TraitClassifier:
    """Big-Five multi-label text classifier with an embedding+logreg or a fine-tuned-encoder backend."""

    def __init__(self, encoder_path: str | Path, backend: str = "embedding_logreg", threshold: float | None = None,
                 C: float = 1.0, class_weight: str | None = "balanced", max_seq_length: int = 256,
                 lr: float = 2e-5, batch_size: int = 16, epochs: int = 5, seed: int = 0,
                 long_texts: bool = False, calibrate: float | None = None, features: str = "embedding"):
        if backend not in BACKENDS:
            raise ValueError(f"unknown classifier backend {backend!r}; expected one of {BACKENDS}")
        self.encoder_path = str(encoder_path)
        self.backend = backend
        # JIC decides at 0.4 for the fine-tuned model; 0.5 is the natural default for calibrated logistic regression.
        self.threshold = threshold if threshold is not None else (0.4 if backend == "finetune" else 0.5)
        self.C, self.class_weight, self.max_seq_length = C, class_weight, max_seq_length
        self.lr, self.batch_size, self.epochs, self.seed = lr, batch_size, epochs, seed
        if long_texts and backend != "embedding_logreg":
            raise ValueError("long_texts applies to the embedding_logreg backend only")
        if calibrate is not None and not 0 < calibrate < 1:
            raise ValueError(f"calibrate is the validation share of the training texts, in (0, 1); got {calibrate}")
        if features not in FEATURES:
            raise ValueError(f"unknown features {features!r}; expected one of {FEATURES}")
        if features != "embedding" and backend != "embedding_logreg":
            raise ValueError(f"features {features!r} apply to the embedding_logreg backend only")
        self.long_texts, self.calibrate, self.features = long_texts, calibrate, features
        self.vectorizer = None  # with TF-IDF features: the TfidfVectorizer fitted on the training texts
        self.thresholds: list[float] | None = None  # per trait, when calibrated; else the one threshold
        self.chosen_C: list[float] | None = None  # per trait, what fit() chose (embedding_logreg)
        self.models: list | None = None  # logreg: one LogisticRegression per trait
        self.model = None  # finetune: the sequence-classification model
        self.tokenizer = None

    # ---- fitting -------------------------------------------------------------------------------------------
    def fit(self, texts: list[str], labels) -> TraitClassifier:
        """Train on texts with n x 5 binary labels."""
        texts = list(texts)
        if not texts:
            raise ValueError("fit: no training texts")
        y = as_label_matrix(labels, len(texts))
        if self.backend == "embedding_logreg":
            self._fit_logreg(texts, y)
        else:
            self._fit_finetune(texts, y)
        return self

    def _embed(self, texts: list[str]):
        """The features of texts: the sentence embedding, word uni- and bigram TF-IDF, or both side by side."""
        from lib.embed import embed, embed_long

        blocks = []
        if "embedding" in self.features:
            fn = embed_long if self.long_texts else embed
            blocks.append(fn(texts, self.encoder_path, max_seq_length=self.max_seq_length))
        if "tfidf" in self.features:
            from sklearn.feature_extraction.text import TfidfVectorizer

            if self.vectorizer is None:  # fitted on the training texts, then fixed
                self.vectorizer = TfidfVectorizer(ngram_range=(1, 2), min_df=3, sublinear_tf=True, max_features=50_000)
                self.vectorizer.fit(texts)
            blocks.append(self.vectorizer.transform(texts))
        if len(blocks) == 1:
            return blocks[0]
        from scipy.sparse import csr_matrix, hstack

        return hstack([csr_matrix(b) for b in blocks]).tocsr()

    def _fit_logreg(self, texts: list[str], y: np.ndarray) -> None:
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import StratifiedKFold, cross_val_score, train_test_split

        self.vectorizer = None  # a refit learns its vocabulary afresh
        X = self._embed(texts)
        grid = list(self.C) if isinstance(self.C, (list, tuple)) else [self.C]
        self.models, self.chosen_C, self.thresholds = [], [], [] if self.calibrate else None
        for j, trait in enumerate(TRAITS):
            if len(np.unique(y[:, j])) < 2:
                raise ValueError(f"fit: trait {trait} has a single class ({y[0, j]}) in the training labels")

            def model(c: float) -> LogisticRegression:
                return LogisticRegression(C=c, class_weight=self.class_weight, max_iter=2000, random_state=self.seed)

            best = grid[0]
            if len(grid) > 1:  # C by 5-fold cross-validated accuracy on the training texts
                folds = StratifiedKFold(5, shuffle=True, random_state=self.seed)
                cv = [cross_val_score(model(c), X, y[:, j], cv=folds, scoring="accuracy").mean() for c in grid]
                best = grid[int(np.argmax(cv))]
            self.chosen_C.append(float(best))
            if self.calibrate:  # the threshold that is most accurate on a held-out share of the training texts
                X_fit, X_val, y_fit, y_val = train_test_split(X, y[:, j], test_size=self.calibrate,
                                                              random_state=self.seed, stratify=y[:, j])
                p_val = model(best).fit(X_fit, y_fit).predict_proba(X_val)[:, 1]
                candidates = np.round(np.arange(0.30, 0.701, 0.01), 2)
                accuracy = [((p_val >= t) == y_val).mean() for t in candidates]
                self.thresholds.append(float(candidates[int(np.argmax(accuracy))]))
            self.models.append(model(best).fit(X, y[:, j]))

    def decision_thresholds(self) -> np.ndarray:
        """The (5,) thresholds predict() applies: calibrated per trait, else the one threshold for every trait."""
        return np.asarray(self.thresholds if self.thresholds else [self.threshold] * len(TRAITS), dtype=float)

    def _fit_finetune(self, texts: list[str], y: np.ndarray) -> None:
        import torch
        from transformers import (
            AutoModelForSequenceClassification,
            AutoTokenizer,
            DataCollatorWithPadding,
            Trainer,
            TrainingArguments,
        )

        torch.manual_seed(self.seed)
        self.tokenizer = AutoTokenizer.from_pretrained(self.encoder_path)
        self.model = AutoModelForSequenceClassification.from_pretrained(
            self.encoder_path, num_labels=len(TRAITS), problem_type="multi_label_classification",
            id2label=dict(enumerate(TRAITS)), label2id={t: i for i, t in enumerate(TRAITS)})
        self._cap_tokenizer()
        if self.max_seq_length > self.tokenizer.model_max_length:
            log.warning("%s takes at most %d tokens; texts are cut there, not at max_seq_length %d",
                        self.encoder_path, self.tokenizer.model_max_length, self.max_seq_length)
        enc = self.tokenizer(texts, truncation=True, max_length=self._max_length())
        with tempfile.TemporaryDirectory() as tmp:
            args = TrainingArguments(output_dir=tmp, learning_rate=self.lr, per_device_train_batch_size=self.batch_size,
                                     num_train_epochs=self.epochs, seed=self.seed, save_strategy="no",
                                     eval_strategy="no", report_to=[], disable_tqdm=True, logging_strategy="no",
                                     use_cpu=not torch.cuda.is_available(), dataloader_num_workers=0)
            trainer = Trainer(model=self.model, args=args, train_dataset=_TextDataset(enc, y),
                              data_collator=DataCollatorWithPadding(self.tokenizer))
            trainer.train()
        self.model = trainer.model.eval()

    def _cap_tokenizer(self) -> None:
        """Give the tokenizer the encoder's real limit, so the saved classifier carries it and no text passes it."""
        from lib.embed import max_input_tokens

        self.tokenizer.model_max_length = max_input_tokens(self.model.config, self.tokenizer)

    def _max_length(self) -> int:
        """Where the fine-tuned backend cuts a text: max_seq_length, or the encoder's limit if that is smaller."""
        return min(self.max_seq_length, self.tokenizer.model_max_length)

    # ---- inference -----------------------------------------------------------------------------------------
    def predict_proba(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        """P(high) per trait: an (n, 5) array in [0, 1], columns in TRAITS order."""
        texts = list(texts)
        if self.models is None and self.model is None:
            raise RuntimeError("TraitClassifier is not fitted; call fit() or load()")
        if not texts:
            return np.zeros((0, len(TRAITS)))
        if self.backend == "embedding_logreg":
            X = self._embed(texts)
            # classes_ is [0, 1] because fit insists on both classes; column 1 is P(high).
            return np.column_stack([m.predict_proba(X)[:, 1] for m in self.models])
        import torch

        device = next(self.model.parameters()).device
        out = []
        with torch.no_grad():
            for start in range(0, len(texts), batch_size):
                batch = self.tokenizer(texts[start:start + batch_size], truncation=True, padding=True,
                                       max_length=self._max_length(), return_tensors="pt").to(device)
                out.append(torch.sigmoid(self.model(**batch).logits.float()).cpu().numpy())
        return np.concatenate(out).astype(float)

    def predict(self, texts: list[str], threshold: float | None = None) -> np.ndarray:
        """Binary (n, 5) high/low traits at `threshold` (default: the classifier's own, per trait if calibrated)."""
        t = self.decision_thresholds() if threshold is None else threshold
        return (self.predict_proba(texts) >= t).astype(int)

    # ---- persistence ---------------------------------------------------------------------------------------
    def _meta(self) -> dict:
        return {"backend": self.backend, "encoder_path": _portable(self.encoder_path), "threshold": self.threshold,
                "traits": list(TRAITS), "C": self.C, "class_weight": self.class_weight,
                "max_seq_length": self.max_seq_length, "lr": self.lr, "batch_size": self.batch_size,
                "epochs": self.epochs, "seed": self.seed, "long_texts": self.long_texts, "calibrate": self.calibrate, "features": self.features,
                "thresholds": self.thresholds, "chosen_C": self.chosen_C}

    def save(self, out_dir: str | Path) -> Path:
        """Write meta.json plus the sklearn models (joblib) or the fine-tuned model and tokenizer."""
        import joblib

        if self.models is None and self.model is None:
            raise RuntimeError("cannot save an unfitted TraitClassifier")
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        if self.backend == "embedding_logreg":
            joblib.dump(self.models, out_dir / "logreg.joblib")
            if self.vectorizer is not None:
                joblib.dump(self.vectorizer, out_dir / "tfidf.joblib")  # fitted vocabulary and idf
        else:
            self.model.save_pretrained(out_dir / "model")
            self.tokenizer.save_pretrained(out_dir / "model")
        (out_dir / "meta.json").write_text(json.dumps(self._meta(), indent=2) + "\n", encoding="utf-8")
        return out_dir

    @classmethod
    def load(cls, in_dir: str | Path) -> TraitClassifier:
        """Rebuild a classifier written by save()."""
        import joblib

        in_dir = Path(in_dir)
        meta_path = in_dir / "meta.json"
        if not meta_path.exists():
            raise FileNotFoundError(f"no classifier meta.json in {in_dir}")
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if tuple(meta.get("traits", ())) != TRAITS:
            raise ValueError(f"{meta_path}: trait order {meta.get('traits')} differs from {TRAITS}")
        kw = {k: meta[k] for k in ("threshold", "C", "class_weight", "max_seq_length", "lr", "batch_size", "epochs",
                                   "seed")}
        kw |= {k: meta.get(k, default) for k, default in (("long_texts", False), ("calibrate", None), ("features", "embedding"))}
        obj = cls(_located(meta["encoder_path"]), backend=meta["backend"], **kw)
        obj.thresholds, obj.chosen_C = meta.get("thresholds"), meta.get("chosen_C")
        if obj.backend == "embedding_logreg":
            obj.models = joblib.load(in_dir / "logreg.joblib")
            if "tfidf" in obj.features:
                obj.vectorizer = joblib.load(in_dir / "tfidf.joblib")
        else:
            import torch
            from transformers import AutoModelForSequenceClassification, AutoTokenizer

            obj.tokenizer = AutoTokenizer.from_pretrained(in_dir / "model")
            obj.model = AutoModelForSequenceClassification.from_pretrained(in_dir / "model").eval()
            obj._cap_tokenizer()  # classifiers saved before the cap carry deberta-large's int(1e30)
            if torch.cuda.is_available():
                obj.model.to("cuda")
        return obj


def evaluate_classifier(y_true, y_prob, threshold: float = 0.5, y_train=None) -> dict:
    """Per-trait accuracy, macro F1 and majority-class baseline (majority taken from training labels), plus means."""
    from sklearn.metrics import accuracy_score, f1_score

    y_true = as_label_matrix(y_true)
    y_prob = np.asarray(y_prob, dtype=float)
    if y_prob.shape != y_true.shape:
        raise ValueError(f"y_prob shape {y_prob.shape} differs from y_true shape {y_true.shape}")
    if len(y_true) == 0:
        raise ValueError("evaluate_classifier: no rows")
    # Without training labels the baseline is computed on the test labels, an optimistic baseline; say so.
    source = "train" if y_train is not None else "test"
    y_base = as_label_matrix(y_train) if y_train is not None else y_true
    y_pred = (y_prob >= np.broadcast_to(np.asarray(threshold, dtype=float), (len(TRAITS),))).astype(int)
    per_trait = {}
    for j, trait in enumerate(TRAITS):
        majority = int(y_base[:, j].mean() >= 0.5)  # ties go to "high"
        per_trait[trait] = {
            "accuracy": float(accuracy_score(y_true[:, j], y_pred[:, j])),
            "f1_macro": float(f1_score(y_true[:, j], y_pred[:, j], average="macro", labels=[0, 1], zero_division=0)),
            "majority_accuracy": float((y_true[:, j] == majority).mean()),
            "majority_class": majority,
        }
    mean = {k: float(np.mean([per_trait[t][k] for t in TRAITS])) for k in ("accuracy", "f1_macro", "majority_accuracy")}
    threshold = np.asarray(threshold, dtype=float)
    return {"per_trait": per_trait, "mean": mean, "threshold": threshold.tolist() if threshold.ndim else float(threshold),
            "majority_source": source,
            "n": len(y_true)}


def _portable(encoder_path: str) -> str:
    """The encoder as meta.json records it: relative to the repository where it lies inside it (so the saved
    classifier's bytes do not depend on where the checkout is), else as given (a Hub id)."""
    path = Path(encoder_path)
    if path.is_absolute() and path.is_relative_to(ROOT):
        return path.relative_to(ROOT).as_posix()
    return encoder_path


def _located(recorded: str) -> str:
    """The encoder a meta.json names: a path relative to this checkout where that exists, else as recorded."""
    local = ROOT / recorded
    return str(local) if not Path(recorded).is_absolute() and local.exists() else recorded
