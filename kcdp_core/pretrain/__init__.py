"""kcdp-pretrain: the `mini` foundation (aligned image encoder, VAE, text-conditioned UNet)."""
