"""Tokenizers shared by the policies: actions, images, proprioceptive state."""

from policy.tokenizers.actions import MuLawActionTokenizer, UniformActionTokenizer
from policy.tokenizers.images import PatchTokenizer, RT1ImageTokenizer, TokenLearner
from policy.tokenizers.state import StateTokenizer

__all__ = ["MuLawActionTokenizer", "UniformActionTokenizer", "PatchTokenizer",
           "RT1ImageTokenizer", "TokenLearner", "StateTokenizer"]
