"""GPU / accelerator catalog for scripts/build_data.py (facts from vendor datasheets).

Columns: name, aliases, vendor, vram_gb, mem_bw_gbps (GB/s), fp16_tflops, tdp_w, source[, note].

fp16_tflops = peak DENSE (no structured sparsity) FP16 tensor/matrix throughput with FP32
accumulate, i.e. what a PyTorch fp16/bf16 GEMM can reach. Datasheets often print the 2:4-sparsity
figure (2x); we halve it. GeForce cards run FP16-with-FP32-accumulate at half their FP16-accumulate
rate (NVIDIA Ampere GA102 / Ada / Blackwell GB202 whitepapers), so the GeForce figures below are the
"FP32 accumulate" column of those whitepapers. Apple GPUs have no separate tensor rate: the figure
is the FP32 = FP16 shader peak (cores x 128 ALUs x 2 x clock).

embodied_kgco2e is filled in by build_data.py: EcoLogits 0.11.3 GPU_EMBODIED_IMPACT_GWP = 273
kgCO2e per GPU for every accelerator (no per-model life-cycle assessment is published).

idle_w (optional, with idle_source) = board power while a process holds a CUDA context and a model but
runs nothing: what a GPU reserved for a deployment draws between its stage's steps. A context holds the
GPU at its boost clock, so this is well above bare idle. Only measured, cited values; the cost model's
default (IDLE_POWER_FRACTION x TDP) applies to the rest.
"""

PARKING_TAX = ("Vadari, 'The Model Parking Tax', arXiv:2605.23918 (2026), Table 2: board power at 0% utilisation "
               "with a CUDA context held (nvidia-smi every 30 s for 20 min, n=40); bare idle without a context "
               "was {bare} W")

NV = "nvidia"

GPUS = [
    # --- NVIDIA data-centre: Hopper / Blackwell (NVIDIA H100, H200, DGX B200 datasheets) ---
    dict(name="B200", aliases=["B200 SXM", "B200 180GB"], vendor=NV, vram_gb=180, mem_bw_gbps=8000,
         fp16_tflops=2250, tdp_w=1000, source="NVIDIA DGX B200 datasheet (per GPU: 4.5 PF FP16 sparse)"),
    dict(name="H200 SXM", aliases=["H200", "H200 141GB", "H200 SXM5"], vendor=NV, vram_gb=141,
         mem_bw_gbps=4800, fp16_tflops=989, tdp_w=700, source="NVIDIA H200 Tensor Core GPU datasheet"),
    dict(name="H100 SXM", aliases=["H100", "H100 SXM5", "H100 80GB", "H100 SXM 80GB", "H100 SXM5 80GB"],
         vendor=NV, vram_gb=80, mem_bw_gbps=3350, fp16_tflops=989, tdp_w=700,
         source="NVIDIA H100 Tensor Core GPU datasheet", idle_w=121.7, idle_source=PARKING_TAX.format(bare=71.8)),
    dict(name="H100 PCIe", aliases=["H100 PCIe 80GB", "H100 PCI-E"], vendor=NV, vram_gb=80, mem_bw_gbps=2000,
         fp16_tflops=756, tdp_w=350, source="NVIDIA H100 Tensor Core GPU datasheet"),
    dict(name="H100 NVL", aliases=["H100 NVL 94GB"], vendor=NV, vram_gb=94, mem_bw_gbps=3900,
         fp16_tflops=835, tdp_w=400, source="NVIDIA H100 Tensor Core GPU datasheet"),
    # --- NVIDIA Ampere data-centre (A100 80GB / 40GB datasheets; A10, A40 datasheets) ---
    dict(name="A100 SXM 80GB", aliases=["A100", "A100 80GB", "A100 SXM", "A100 SXM4 80GB", "A100 SXM4"],
         vendor=NV, vram_gb=80, mem_bw_gbps=2039, fp16_tflops=312, tdp_w=400,
         source="NVIDIA A100 Tensor Core GPU datasheet"),
    dict(name="A100 SXM 40GB", aliases=["A100 40GB", "A100 SXM4 40GB"], vendor=NV, vram_gb=40,
         mem_bw_gbps=1555, fp16_tflops=312, tdp_w=400, source="NVIDIA A100 Tensor Core GPU datasheet"),
    dict(name="A100 PCIe 80GB", aliases=["A100 PCIe", "A100 80GB PCIe"], vendor=NV, vram_gb=80,
         mem_bw_gbps=1935, fp16_tflops=312, tdp_w=300, source="NVIDIA A100 Tensor Core GPU datasheet",
         idle_w=80.0, idle_source=PARKING_TAX.format(bare=53.7)),
    dict(name="A100 PCIe 40GB", aliases=["A100 40GB PCIe"], vendor=NV, vram_gb=40, mem_bw_gbps=1555,
         fp16_tflops=312, tdp_w=250, source="NVIDIA A100 Tensor Core GPU datasheet (40GB PCIe)"),
    dict(name="A40", aliases=["A40 48GB"], vendor=NV, vram_gb=48, mem_bw_gbps=696, fp16_tflops=149.7,
         tdp_w=300, source="NVIDIA A40 datasheet"),
    dict(name="A10", aliases=["A10 24GB"], vendor=NV, vram_gb=24, mem_bw_gbps=600, fp16_tflops=125,
         tdp_w=150, source="NVIDIA A10 Tensor Core GPU datasheet"),
    dict(name="A10G", aliases=["A10G 24GB"], vendor=NV, vram_gb=24, mem_bw_gbps=600, fp16_tflops=125,
         tdp_w=300, source="AWS EC2 G5 (A10G) documentation; no public NVIDIA datasheet",
         note="AWS-only A10 variant: memory/bandwidth as A10; fp16 taken equal to the A10 datasheet; "
              "tdp_w is the 300 W power cap nvidia-smi reports on g5 instances"),
    # --- NVIDIA Ada / Turing / Volta data-centre ---
    dict(name="L4", aliases=["L4 24GB"], vendor=NV, vram_gb=24, mem_bw_gbps=300, fp16_tflops=121,
         tdp_w=72, source="NVIDIA L4 Tensor Core GPU datasheet"),
    dict(name="L40", aliases=["L40 48GB"], vendor=NV, vram_gb=48, mem_bw_gbps=864, fp16_tflops=181,
         tdp_w=300, source="NVIDIA L40 datasheet"),
    dict(name="L40S", aliases=["L40S 48GB"], vendor=NV, vram_gb=48, mem_bw_gbps=864, fp16_tflops=362,
         tdp_w=350, source="NVIDIA L40S datasheet", idle_w=102.1, idle_source=PARKING_TAX.format(bare=35.6)),
    dict(name="T4", aliases=["T4 16GB"], vendor=NV, vram_gb=16, mem_bw_gbps=320, fp16_tflops=65,
         tdp_w=70, source="NVIDIA T4 Tensor Core GPU datasheet"),
    dict(name="V100 SXM2 16GB", aliases=["V100", "V100 16GB", "V100 SXM2"], vendor=NV, vram_gb=16,
         mem_bw_gbps=900, fp16_tflops=125, tdp_w=300, source="NVIDIA V100 Tensor Core GPU datasheet"),
    dict(name="V100 SXM2 32GB", aliases=["V100 32GB"], vendor=NV, vram_gb=32, mem_bw_gbps=900,
         fp16_tflops=125, tdp_w=300, source="NVIDIA V100 Tensor Core GPU datasheet"),
    dict(name="V100 PCIe 16GB", aliases=["V100 PCIe"], vendor=NV, vram_gb=16, mem_bw_gbps=900,
         fp16_tflops=112, tdp_w=250, source="NVIDIA V100 Tensor Core GPU datasheet"),
    # --- NVIDIA professional workstation (RTX A6000, RTX 6000 Ada datasheets) ---
    dict(name="RTX A6000", aliases=["A6000"], vendor=NV, vram_gb=48, mem_bw_gbps=768, fp16_tflops=154.8,
         tdp_w=300, source="NVIDIA RTX A6000 datasheet (309.7 TFLOPS sparse tensor)"),
    dict(name="RTX 6000 Ada", aliases=["RTX 6000 Ada Generation", "6000 Ada"], vendor=NV, vram_gb=48,
         mem_bw_gbps=960, fp16_tflops=364.2, tdp_w=300,
         source="NVIDIA RTX 6000 Ada Generation datasheet (1457 TFLOPS FP8 sparse)"),
    # --- NVIDIA GeForce (GA102/GA104/GA106, Ada AD102-AD106, Blackwell GB202 whitepapers) ---
    dict(name="RTX 3060", aliases=["RTX 3060 12GB", "3060"], vendor=NV, vram_gb=12, mem_bw_gbps=360,
         fp16_tflops=25.5, tdp_w=170, source="NVIDIA GeForce RTX 3060 specs; Ampere GA10x whitepaper"),
    dict(name="RTX 3070", aliases=["RTX 3070 8GB", "3070"], vendor=NV, vram_gb=8, mem_bw_gbps=448,
         fp16_tflops=40.6, tdp_w=220, source="NVIDIA Ampere GA102 whitepaper (GeForce RTX 3070)"),
    dict(name="RTX 3080", aliases=["RTX 3080 10GB", "3080"], vendor=NV, vram_gb=10, mem_bw_gbps=760,
         fp16_tflops=59.5, tdp_w=320, source="NVIDIA Ampere GA102 whitepaper (GeForce RTX 3080)"),
    dict(name="RTX 3090", aliases=["RTX 3090 24GB", "3090"], vendor=NV, vram_gb=24, mem_bw_gbps=936,
         fp16_tflops=71, tdp_w=350, source="NVIDIA Ampere GA102 whitepaper (GeForce RTX 3090)"),
    dict(name="RTX 4060 Ti 16GB", aliases=["RTX 4060 Ti", "4060 Ti", "4060 Ti 16GB"], vendor=NV,
         vram_gb=16, mem_bw_gbps=288, fp16_tflops=44.1, tdp_w=165,
         source="NVIDIA GeForce RTX 4060 Ti specs; Ada whitepaper"),
    dict(name="RTX 4070", aliases=["RTX 4070 12GB", "4070"], vendor=NV, vram_gb=12, mem_bw_gbps=504,
         fp16_tflops=58.3, tdp_w=200, source="NVIDIA GeForce RTX 4070 specs; Ada whitepaper"),
    dict(name="RTX 4080", aliases=["RTX 4080 16GB", "4080"], vendor=NV, vram_gb=16, mem_bw_gbps=716.8,
         fp16_tflops=97.5, tdp_w=320, source="NVIDIA Ada Lovelace whitepaper (GeForce RTX 4080)"),
    dict(name="RTX 4090", aliases=["RTX 4090 24GB", "4090"], vendor=NV, vram_gb=24, mem_bw_gbps=1008,
         fp16_tflops=165.2, tdp_w=450, source="NVIDIA Ada Lovelace whitepaper (GeForce RTX 4090)"),
    dict(name="RTX 5090", aliases=["RTX 5090 32GB", "5090"], vendor=NV, vram_gb=32, mem_bw_gbps=1792,
         fp16_tflops=209.5, tdp_w=575, source="NVIDIA RTX Blackwell GPU architecture whitepaper (RTX 5090)"),
    # --- Apple silicon (unified memory; Apple tech specs). TDP is not published per chip. ---
    dict(name="Apple M2 Ultra", aliases=["M2 Ultra"], vendor="apple", vram_gb=192, mem_bw_gbps=800,
         fp16_tflops=27.2, tdp_w=295,
         source="Apple Mac Studio (2023) tech specs; Apple 'Mac Studio power consumption' support page",
         note="76-core GPU, 192 GB maximum configuration; tdp_w = Apple's published maximum Mac Studio "
              "system power, an upper bound; fp16_tflops derived (cores x 128 x 2 x clock), not "
              "published by Apple"),
    dict(name="Apple M3 Max", aliases=["M3 Max"], vendor="apple", vram_gb=128, mem_bw_gbps=400,
         fp16_tflops=16.4, tdp_w=140,
         source="Apple MacBook Pro (Nov 2023) tech specs",
         note="40-core GPU, 128 GB maximum configuration (30-core variant: 300 GB/s); tdp_w = rating of "
              "the 140 W USB-C power adapter shipped with the 16-inch model, an upper bound; "
              "fp16_tflops derived (cores x 128 x 2 x clock), not published by Apple"),
    dict(name="Apple M4 Max", aliases=["M4 Max"], vendor="apple", vram_gb=128, mem_bw_gbps=546,
         fp16_tflops=18.4, tdp_w=140,
         source="Apple MacBook Pro (Nov 2024) tech specs",
         note="40-core GPU, 128 GB maximum configuration (32-core variant: 410 GB/s); tdp_w = rating of "
              "the 140 W USB-C power adapter shipped with the 16-inch model, an upper bound; "
              "fp16_tflops derived (cores x 128 x 2 x clock), not published by Apple"),
    # --- AMD (Instinct MI250X / MI300X datasheets, Radeon RX 7900 XTX specs) ---
    dict(name="MI300X", aliases=["Instinct MI300X", "AMD MI300X"], vendor="amd", vram_gb=192,
         mem_bw_gbps=5300, fp16_tflops=1307.4, tdp_w=750, source="AMD Instinct MI300X datasheet"),
    dict(name="MI250X", aliases=["Instinct MI250X", "AMD MI250X"], vendor="amd", vram_gb=128,
         mem_bw_gbps=3276.8, fp16_tflops=383, tdp_w=500, source="AMD Instinct MI250X datasheet"),
    dict(name="RX 7900 XTX", aliases=["Radeon RX 7900 XTX", "7900 XTX", "AMD RX 7900 XTX"], vendor="amd",
         vram_gb=24, mem_bw_gbps=960, fp16_tflops=122.8, tdp_w=355,
         source="AMD Radeon RX 7900 XTX specifications (peak half-precision 122.8 TFLOPS)"),
    # --- Generic CPU fallback (NOT a datasheet: a deliberately modest 2-core desktop/VM figure) ---
    dict(name="CPU", aliases=["cpu", "generic cpu", "x86"], vendor="generic", vram_gb=8, mem_bw_gbps=20,
         fp16_tflops=0.1, tdp_w=65,
         source="Prismn convention: generic 2-core CPU (DDR4 dual-channel ~20 GB/s usable, ~0.1 TFLOPS, "
                "65 W desktop TDP class)",
         note="vram_gb = RAM assumed available for model weights; override per peer"),
]
