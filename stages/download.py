"""Stage download: fetch and verify the four MNIST files into data/mnist/.

Sources: $MNIST_MIRROR first when set (a URL or a local folder with the .gz
files), then the official mirrors. Not a DVC param: the mirror never changes
the (checksum-verified) data.
"""

from mnist_vae.data import download_mnist
from mnist_vae.stage import run

OUT = "data/mnist"

if __name__ == "__main__":
    run(lambda: download_mnist(OUT), "download")
