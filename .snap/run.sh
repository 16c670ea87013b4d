cd old && python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1
timeout 280 python3 -m jaxllm.bench --shape llama3-8b --skip b1,bN,ttft,start --out $OUT/slot8b.json > $OUT/slot8b.txt 2>&1
echo "== slot engine (1e0f98d)"; grep -E "offline|Error|rror" $OUT/slot8b.txt | cut -c1-400
cd ../new && python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1
timeout 280 python3 -m jaxllm.bench --shape llama3-8b --skip b1,bN,ttft,long,prefix,start --out $OUT/paged8b.json > $OUT/paged8b.txt 2>&1
echo "== paged"; grep -E "offline|Error|rror" $OUT/paged8b.txt | cut -c1-400
