# The demo cohort: written in real file formats when simulate.enabled (the shipped config).
if config["simulate"]["enabled"]:

    rule simulate:
        output:
            truth=f"{config['simulate']['outdir']}/truth.json",
            files=simulated_files(),
        log:
            f"{LOGS}/simulate.log",
        benchmark:
            f"{OUT}/benchmarks/simulate.tsv"
        conda:
            "../envs/multimodal.yaml"
        threads: 1
        resources:
            mem_mb=2000,
            runtime=20,
        params:
            outdir=lambda wc, output: os.path.dirname(output.truth),
            patients=config["simulate"]["n_patients"],
            seed=config["simulate"]["seed"],
            image_size=config["simulate"]["image_size"],
            interaction=config["simulate"]["arm_kras_interaction"],
        shell:
            "multimodal simulate --out {params.outdir:q} --patients {params.patients} --seed {params.seed}"
            " --image-size {params.image_size} --arm-kras-interaction {params.interaction} > {log:q} 2>&1"
