"""The npm packages the emoji benchmark is built from, pinned by version and integrity hash.

Each pin was read with `npm view <name>@<version> dist.integrity`; a tarball whose sha512 differs
is refused. `open_licence` marks art that may be redistributed and trained on for committed
weights; only those packages feed the pretraining corpus.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class NpmPackage:
    """One pinned npm tarball."""

    name: str
    version: str
    integrity: str  # SRI string "sha512-<base64>", as the registry reports it
    licence: str  # licence of the art (not of the package's code)
    open_licence: bool  # Apache/MIT/CC-BY/CC-BY-SA: may be redistributed and used for committed weights

    @property
    def spec(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def tarball_name(self) -> str:
        """The file name `npm pack` writes: scope without '@', '/' as '-'."""
        return f"{self.name.lstrip('@').replace('/', '-')}-{self.version}.tgz"


def _pkg(name: str, version: str, integrity: str, licence: str, open_licence: bool) -> NpmPackage:
    return NpmPackage(name, version, integrity, licence, open_licence)


PACKAGES: dict[str, NpmPackage] = {
    p.name: p
    for p in (
        # Metadata: CLDR names, keywords, groups (emojibase) and Unicode names/short names (iamcal).
        _pkg(
            "emojibase-data",
            "17.0.0",
            "sha512-Yvgb5AWoHViHV/gq1qr5ZAarcBip+B27/ZLRsUJkbgAEaLlZ/fof9g882LTpmEpyhBNEC0m2SEmItljHsTygjA==",
            "MIT (data derived from Unicode CLDR, Unicode-3.0)",
            True,
        ),
        _pkg(
            "emoji-datasource",
            "16.0.0",
            "sha512-/qHKqK5Nr3+8zhgO6kHmF43Fm5C8HNn0AaFRIpgw8HF3+uF0Vfc8jgLI1ZQS5ba1vBzksS8NBCjHejwLb2D/Sg==",
            "MIT (metadata)",
            True,
        ),
        # Vendor art.
        _pkg(
            "emoji-datasource-apple",
            "16.0.0",
            "sha512-dVYjsK0FnCry9F+PBtnivhG2K0xdwlmqYaSgiUtztUdAGPYiHYhZcVKvNBqC791g2qyEcFNTBO6utg4eQ3uLTw==",
            "Apple proprietary (not redistributable)",
            False,
        ),
        _pkg(
            "emoji-datasource-google",
            "16.0.0",
            "sha512-ZRexfzs7MVoLnmzZmNsO4TKhnAJp5D++Vm6PpUpH/jEQQlemp3l88CjZ+DoZ2faM9R4QxZkOPJCoT8DlPhfQ3A==",
            "Apache-2.0 (Noto Color Emoji)",
            True,
        ),
        _pkg(
            "emoji-datasource-twitter",
            "16.0.0",
            "sha512-7F+uCuHH+7Qnrc15P5tnbvKkg9E6tlzi4MnT2uW1RlN4pLYTza6cP/dstIfSDMtpjFLWuZewWg8jBbuL2eyELQ==",
            "CC-BY-4.0 (Twemoji)",
            True,
        ),
        _pkg(
            "emoji-datasource-facebook",
            "16.0.0",
            "sha512-b9ZxJdB7nMWGckH1vyCjPSosaa6MJYuojPPFiQ0LmDIZS8vlG454XKcmTFKrXIMAA72O4MRJMYFhvWI8pjyciQ==",
            "Facebook/Meta proprietary (not redistributable)",
            False,
        ),
        _pkg(
            "emoji-assets",
            "11.0.0",
            "sha512-JvU2JU2QR4g/l+usNyh9CgxPZ6ow+Ik/KSGbLMOoFiGBMg+kZK1W3kFLo+zSSMVG3a25tG5lWwP2cxHkl6Kp7A==",
            "JoyPixels licence (not redistributable)",
            False,
        ),
        _pkg(
            "emojione-assets",
            "4.5.0",
            "sha512-S7Fp6M+T4hiK9ULGGGhnVMMVIqMRj+22Bd0+KgOBu+eV85B7AUX39ML3anMXKp/OEBQXDQuH+yCwy3Fl6dpoAQ==",
            "EmojiOne 4 licence (not redistributable)",
            False,
        ),
        _pkg(
            "@lobehub/fluent-emoji-3d",
            "1.1.0",
            "sha512-Wlq2lVStTnr8BDpIJ0pEnTKO4LuDxxqTEhTvRtD1DLRF0me7ogeRQjKoehDHXuVJ2Qaecgl5wRBv60lUAG3h7g==",
            "MIT (Microsoft Fluent Emoji)",
            True,
        ),
        _pkg(
            "openmoji",
            "17.0.0",
            "sha512-EBnYrNGdcdw+OSXmENeNE1yBNRu6tOraTmoOyUbJkTmvT/+XETp8RZLSJFzD3lrPc5N9CzsyPnRTk0Vp4UaI9w==",
            "CC-BY-SA-4.0 (OpenMoji)",
            True,
        ),
        _pkg(
            "@iconify-json/fluent-emoji",
            "1.2.7",
            "sha512-D8G6bKAyIsyxP1rzZtIWr/gg/fO4Rg1+DyCWlfqKK4h8W+4Em/Y0P6QYgJUQTlUcagzJvSyg+9OBv4hz4Hc/QA==",
            "MIT (Microsoft Fluent Emoji)",
            True,
        ),
        _pkg(
            "@iconify-json/fluent-emoji-flat",
            "1.2.6",
            "sha512-RY47RgPb47fYUiyrA64sIOL0+UU02s29sXpNBbIQRBUlPlfNFTKUmZDERGuxDs/7yNGWqQYvuaSYM1M4fRXlUw==",
            "MIT (Microsoft Fluent Emoji)",
            True,
        ),
        _pkg(
            "@iconify-json/fluent-emoji-high-contrast",
            "1.2.6",
            "sha512-esqhZPpkrF7sNX3NsLoh8KW64okEr/bzko7WNnFP+qTJGAqDPDYjp0925yxuivXy3HtVQB8xhIKu3+Nq1byX5w==",
            "MIT (Microsoft Fluent Emoji)",
            True,
        ),
        _pkg(
            "@iconify-json/noto-v1",
            "1.2.5",
            "sha512-/DsVMius69Q0fRS53z7QK1TROSuar606jiIx+laXtdsYGMXpf6LtHBx6CGfoo3UHHb/XpBsw+1L1x3eyPqMuVA==",
            "Apache-2.0 (Noto Emoji, old design)",
            True,
        ),
        _pkg(
            "@iconify-json/emojione-v1",
            "1.2.3",
            "sha512-UjI2VQEXVtGlPBvQuxEizro7QCgBcJDOYwKUupquvvZ8UV4xOlvm45IU82JYWegiAWLerY79gFLMZ26U6Ms+ww==",
            "CC-BY-SA-4.0 (EmojiOne v1)",
            True,
        ),
        _pkg(
            "@iconify-json/emojione-monotone",
            "1.2.1",
            "sha512-cZSNcPsuiAD6HCzCh/2dYKGh3pNI0jJlxBxQWfC33cQsPtqYZqulGBvlkThXYNvDl8VxgVHT9u+izyX/yeEIkA==",
            "CC-BY-4.0 (EmojiOne monotone)",
            True,
        ),
    )
}

CATALOG_PACKAGES: tuple[str, ...] = ("emojibase-data", "emoji-datasource")
