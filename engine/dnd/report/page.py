"""The report's page: one static HTML file with its style and script, reading data scripts.

Data are ``<script>`` files rather than JSON fetched at run time because browsers refuse
``fetch`` on ``file://``; the report must open by double-click, with no server. Each layer's data
is loaded only when that layer is opened, and cards are built as they scroll into view, so a
report of thousands of neurons opens as fast as one of ten.

A run scored by ``dnd score`` also gets its faithfulness (NeuronEval): each label's and candidate's
metrics on its card, a sort and a minimum filter by any metric, and per layer a histogram of the
labels' scores for each metric, drawn as inline SVG so the page still needs no library or network.
A run not scored shows none of it.

The report of a `dnd compare` folder is the same page with the comparison's code appended to the
script, inside its closure: each card gets a switcher between the methods, the page a control that
switches every card, and the header a line per method. A single run's page is unchanged by it.
"""

from __future__ import annotations

from typing import Any

STYLE = """
body{font-family:system-ui,sans-serif;margin:0;color:#222;background:#f6f6f4}
header{background:#263238;color:#fff;padding:10px 16px}header h1{font-size:18px;margin:0}
header .run{font-size:12px;opacity:.8;word-break:break-all}
nav{padding:8px 16px;background:#eceff1;display:flex;flex-wrap:wrap;gap:8px;align-items:center}
nav a{padding:4px 10px;border-radius:12px;background:#fff;color:#263238;text-decoration:none;font-size:13px}
nav a.current{background:#263238;color:#fff}
main{padding:12px 16px}
#summary{font-size:13px;margin-bottom:8px}
#labels{display:flex;flex-wrap:wrap;gap:4px;margin:6px 0 10px}
#labels button{font-size:12px;border:1px solid #b0bec5;background:#fff;border-radius:10px;cursor:pointer}
#search{font-size:15px;padding:6px 8px;width:min(480px,90%)}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;margin:10px 0;padding:10px;content-visibility:auto;contain-intrinsic-size:auto 420px}
.card h2{font-size:15px;margin:0 0 4px}.card .label{font-size:17px;font-weight:600}
.status-ok{color:#2e7d32}.status-failed{color:#c62828}
.labels{font-size:12px;color:#555;margin:2px 0 6px}
.imgs{display:flex;flex-wrap:wrap;gap:8px}
figure{margin:0;width:132px;font-size:11px}figure img{width:128px;height:128px;object-fit:contain;background:#eee;display:block}
.parent{position:relative;width:64px;height:64px;margin-top:2px}.parent img{width:64px;height:64px;object-fit:fill}
.box{position:absolute;border:2px solid #ff1744;box-sizing:border-box}
.missing{display:block;width:128px;height:128px;background:#eee;color:#999;text-align:center;line-height:128px}
table{border-collapse:collapse;font-size:12px;margin-top:6px}td,th{border-bottom:1px solid #eee;padding:2px 6px;text-align:left}
.gen img{width:48px;height:48px;margin-right:2px}
.error{color:#c62828;font-size:12px;white-space:pre-wrap}
h3{font-size:13px;margin:8px 0 4px}
.faith{font-size:12px;color:#37474f;margin:2px 0 6px}
#score-controls{font-size:13px;margin:6px 0;display:flex;flex-wrap:wrap;gap:14px}
#score-controls input{width:6em}
#faithfulness .note{font-size:12px;color:#555}
.hists{display:flex;flex-wrap:wrap;gap:14px;margin:4px 0 8px}
figure.hist{width:184px}figure.hist figcaption{font-size:11px}
.hist .bar{fill:#546e7a}.hist .bar.below{fill:#cfd8dc}.hist .hit{fill:transparent;cursor:pointer}
.hist .axis{stroke:#90a4ae}.hist text{font-size:9px;fill:#555}
"""

SCRIPT = r"""
(function(){
var I=window.DND_INDEX, loaded={}, state={layer:null,rows:[],shown:0,query:'',sort:'',minMetric:'',min:null};
var SCORES=['mean','top-k squared','image products','top-k sq. x image products'];
// Faithfulness of a scored run (null when not scored: then nothing below draws or filters).
var F=I.faithfulness||null, SVG='http://www.w3.org/2000/svg';
window.DND_LAYER=function(k,rows){loaded[k]=rows;if(state.pending===k){state.pending=null;show(k);}};
function el(tag,attrs,text){var e=document.createElement(tag);if(attrs)for(var a in attrs)e.setAttribute(a,attrs[a]);
 if(text!==undefined&&text!==null)e.textContent=String(text);return e;}
function fmt(x){return x===null||x===undefined?'-':Number(x).toPrecision(4);}
function sc(x){return x===null||x===undefined?'-':Number(x).toFixed(3);}
// A metric's value in a row's or candidate's f (values in F.order); null where undefined or not scored.
function fval(f,m){if(!f)return null;var v=f[F.order.indexOf(m)];return v===undefined?null:v;}
function fline(f){return F.metrics.map(function(m){return F.names[m]+' '+sc(fval(f,m));}).join(' \u00b7 ');}
function thumb(id,gen){var have=gen?I.generated:I.thumbs;if(!have[id])return el('span',{'class':'missing'},'not stored');
 return el('img',{src:(gen?'thumbs/g/':'thumbs/')+id+'.jpg',loading:'lazy',alt:id});}
function figure(t){var f=el('figure');f.appendChild(thumb(t.id));
 f.appendChild(el('div',null,(t.p?'crop ':'')+'act '+fmt(t.a)));
 if(t.c!==undefined)f.appendChild(el('div',{'class':'caption'},t.c));
 if(t.p){var p=el('div',{'class':'parent',title:'crop outlined on its parent '+t.p});p.appendChild(thumb(t.p));
  if(t.b){var b=el('div',{'class':'box'});b.style.left=t.b[0]+'%';b.style.top=t.b[1]+'%';b.style.width=t.b[2]+'%';b.style.height=t.b[3]+'%';p.appendChild(b);}
  f.appendChild(p);}
 return f;}
function card(layer,r){var c=el('div',{'class':'card','data-neuron':r.n});
 var h=el('h2');h.appendChild(el('span',null,layer+' / '+r.n+'  '));h.appendChild(el('span',{'class':'status-'+r.status},r.status));c.appendChild(h);
 c.appendChild(el('div',{'class':'label'},r.label===null?'(no label)':r.label));
 if(r.labels.length)c.appendChild(el('div',{'class':'labels'},'labels: '+r.labels.join(' | ')));
 if(F&&r.f)c.appendChild(el('div',{'class':'faith',title:'faithfulness of the label over the whole probing set (NeuronEval)'},
  'faithfulness: '+fline(r.f)+(r.fs?' ('+r.fs+')':'')));
 if(r.error)c.appendChild(el('div',{'class':'error'},r.error));
 c.appendChild(el('h3',null,'top images'));var d=el('div',{'class':'imgs'});r.tops.forEach(function(t){d.appendChild(figure(t));});c.appendChild(d);
 if(r.crops.length){c.appendChild(el('h3',null,'attention crops'));d=el('div',{'class':'imgs'});r.crops.forEach(function(t){d.appendChild(figure(t));});c.appendChild(d);}
 if(r.cands.length){c.appendChild(el('h3',null,'candidate concepts'));var tb=el('table'),hr=el('tr');
  // Faithfulness columns go before the generated images, which are the widest and stay last.
  ['concept','score'].concat(SCORES).concat(['mean activation','images']).concat(F?F.metrics.map(function(m){return F.names[m];}):[]).concat(['generated'])
   .forEach(function(x){hr.appendChild(el('th',null,x));});tb.appendChild(hr);
  r.cands.forEach(function(k){var tr=el('tr');tr.appendChild(el('td',null,k.c+(k.sp?' (sub-phrase)':'')));tr.appendChild(el('td',null,fmt(k.s)));
   k.ss.forEach(function(s){tr.appendChild(el('td',null,fmt(s)));});
   tr.appendChild(el('td',null,fmt(k.ma)));
   tr.appendChild(el('td',null,(k.n===null?'-':k.n)+(k.r?' (refused: '+k.r+')':'')));
   if(F)F.metrics.forEach(function(m){tr.appendChild(el('td',{'class':'faith-cell'},sc(fval(k.f,m))));});
   var g=el('td',{'class':'gen'});k.g.forEach(function(id){g.appendChild(thumb(id,true));});tr.appendChild(g);tb.appendChild(tr);});
  c.appendChild(tb);}
 return c;}
function matches(r,q){if(!q)return true;if(r.label&&r.label.toLowerCase().indexOf(q)>=0)return true;
 for(var i=0;i<r.labels.length;i++)if(r.labels[i].toLowerCase().indexOf(q)>=0)return true;return false;}
function more(){var box=document.getElementById('cards'),L=I.layers[state.layer],end=Math.min(state.rows.length,state.shown+40);
 for(;state.shown<end;state.shown++)box.insertBefore(card(L.name,state.rows[state.shown]),document.getElementById('sentinel'));}
// The minimum filter keeps neurons whose label reaches it; a label with no value (unscored, undefined) does not.
function reaches(r){if(!F||state.min===null||!state.minMetric)return true;var v=fval(r.f,state.minMetric);return v!==null&&v>=state.min;}
// Highest score first, labels without one last; ties (and the default) in neuron order.
function byScore(m){return function(a,b){var x=fval(a.f,m),y=fval(b.f,m);
 if(x===null||y===null)return x===y?a.n-b.n:(x===null?1:-1);return y-x||a.n-b.n;};}
function filter(){var q=state.query.trim().toLowerCase(),all=loaded[state.layer];
 state.rows=all.filter(function(r){return matches(r,q)&&reaches(r);});
 if(F&&state.sort)state.rows.sort(byScore(state.sort));state.shown=0;if(F)shade();
 var box=document.getElementById('cards');box.querySelectorAll('.card').forEach(function(c){c.remove();});
 document.getElementById('shown-count').textContent=state.rows.length+' of '+all.length+' neurons';more();}
function sv(tag,attrs){var e=document.createElementNS(SVG,tag);for(var a in attrs)e.setAttribute(a,attrs[a]);return e;}
// One metric's histogram of the layer's label scores: a bar per bin over the metric's whole range,
// so layers compare by eye; clicking a bin keeps the neurons at or above its lower edge.
function histogram(m,h){var W=180,H=48,n=h.counts.length,top=Math.max.apply(null,h.counts)||1,w=W/n,step=(h.high-h.low)/n;
 var f=el('figure',{'class':'hist','data-metric':m});
 f.appendChild(el('figcaption',null,F.names[m]+': median '+sc(h.median)+', '+h.defined+' defined'));
 var s=sv('svg',{width:W,height:H+12,viewBox:'0 0 '+W+' '+(H+12),role:'img','aria-label':'histogram of '+m});
 h.counts.forEach(function(c,i){var low=h.low+step*i,bh=c?Math.max(1,H*c/top):0;
  s.appendChild(sv('rect',{'class':'bar','data-high':(low+step).toFixed(4),x:i*w+0.5,y:H-bh,width:w-1,height:bh}));
  var hit=sv('rect',{'class':'hit',x:i*w,y:0,width:w,height:H}),t=sv('title',{});
  t.textContent=F.names[m]+' '+low.toFixed(2)+' to '+(low+step).toFixed(2)+': '+c+' neuron'+(c===1?'':'s');hit.appendChild(t);
  hit.addEventListener('click',function(){setMin(m,Number(low.toFixed(4)));});s.appendChild(hit);});
 s.appendChild(sv('line',{'class':'axis',x1:0,y1:H+0.5,x2:W,y2:H+0.5}));
 [[h.low,0,'start'],[h.high,W,'end']].concat(h.low<0?[[0,W/2,'middle']]:[]).forEach(function(a){
  var t=sv('text',{x:a[1],y:H+10,'text-anchor':a[2]});t.textContent=a[0];s.appendChild(t);});
 f.appendChild(s);return f;}
function plots(L){var box=document.getElementById('faithfulness'),S=L.faithfulness;box.innerHTML='';
 if(!S){box.appendChild(el('div',{'class':'note'},'no label of '+L.name+' was scored for faithfulness'));return;}
 box.appendChild(el('div',{'class':'note'},'faithfulness of the labels over the whole probing set (NeuronEval'+(F.concepts?', concepts: '+F.concepts:'')+
  '): '+S.scored+' of '+L.count+' neurons scored'+
  (F.alpha!==null&&F.alpha!==undefined?'; F1 and IoU binarise each neuron at its top \u03b1 = '+F.alpha+' of probe images':'')));
 var row=el('div',{'class':'hists'});F.metrics.forEach(function(m){if(S.metrics[m])row.appendChild(histogram(m,S.metrics[m]));});
 box.appendChild(row);shade();}
// Grey the bins below the minimum so the plot shows which part of the distribution is on screen.
function shade(){document.querySelectorAll('#faithfulness .hist').forEach(function(f){var on=state.min!==null&&f.dataset.metric===state.minMetric;
 f.querySelectorAll('.bar').forEach(function(b){b.setAttribute('class',on&&Number(b.getAttribute('data-high'))<=state.min?'bar below':'bar');});});}
function setMin(m,v){state.minMetric=m;state.min=v;document.getElementById('min-metric').value=m;
 document.getElementById('min-score').value=v===null?'':v;if(loaded[state.layer])filter();else shade();}
function show(k){var L=I.layers[k];state.layer=k;
 document.querySelectorAll('nav a').forEach(function(a){a.className=a.dataset.layer===String(k)?'current':'';});
 document.getElementById('summary').textContent=L.name+': '+L.count+' neurons; '+Object.keys(L.status).map(function(s){return s+' '+L.status[s];}).join(', ');
 var lb=document.getElementById('labels');lb.innerHTML='';
 L.labels.forEach(function(p){var b=el('button',{type:'button',title:'show neurons labelled '+p[0]},p[0]+' ('+p[1]+')');
  b.onclick=function(){document.getElementById('search').value=p[0];state.query=p[0];filter();};lb.appendChild(b);});
 if(F)plots(L);
 if(!loaded[k]){state.pending=k;var s=el('script',{src:'data/layer-'+k+'.js'});document.body.appendChild(s);return;}
 filter();}
function route(){var m=/layer=(\d+)/.exec(location.hash);var k=m?Number(m[1]):0;if(I.layers[k])show(k);}
document.addEventListener('DOMContentLoaded',function(){
 var nav=document.querySelector('nav');I.layers.forEach(function(L,k){var a=el('a',{href:'#layer='+k,'data-layer':k},L.name+' ('+L.count+')');nav.appendChild(a);});
 var input=document.getElementById('search');input.addEventListener('input',function(){state.query=input.value;filter();});
 if(F){var sort=document.getElementById('sort'),metric=document.getElementById('min-metric'),min=document.getElementById('min-score');
  state.minMetric=metric.value;
  var ready=function(){return state.layer!==null&&loaded[state.layer];};
  sort.addEventListener('change',function(){state.sort=sort.value;if(ready())filter();});
  var minimum=function(){var v=parseFloat(min.value);state.minMetric=metric.value;state.min=isNaN(v)?null:v;if(ready())filter();};
  metric.addEventListener('change',minimum);min.addEventListener('input',minimum);}
 new IntersectionObserver(function(es){if(es[0].isIntersecting&&state.layer!==null&&loaded[state.layer])more();}).observe(document.getElementById('sentinel'));
 window.addEventListener('hashchange',route);route();});
})();
"""


COMPARE_STYLE = """
header table.methods{font-size:12px;margin-top:6px;color:#fff}
header table.methods td,header table.methods th{border-bottom:1px solid #455a64;vertical-align:top}
header table.methods .note{color:#ffab91}
#method-control{font-size:13px;margin:6px 0}#method-control .note{font-size:12px;color:#555}
.switch{display:flex;flex-wrap:wrap;gap:4px;margin:2px 0 6px}
.switch button{font-size:12px;border:1px solid #b0bec5;background:#fff;border-radius:10px;cursor:pointer}
.switch button.on{background:#263238;color:#fff;border-color:#263238}
.status-no{color:#757575}
"""

#: Appended inside SCRIPT's closure for a `dnd compare` report. A layer's rows hold the shared
#: images once and each method's part under ``m``; the page keeps them in ``raw`` and hands the code
#: above *views* (shared images + one method's part, shaped as one run's records), so its cards,
#: search, sort, minimum filter and histograms work unchanged, on the method the page-wide control
#: selects. A card's own switcher rebuilds that card alone; the page-wide control rebuilds the view.
COMPARE_SCRIPT = r"""
var M=I.compare.methods,raw={};state.method=M[0];
// A method's captions of the shared images (its Step 2A's, when it captions) go on its view's copies.
function captioned(images,caps){if(!caps)return images;return images.map(function(t){var u={};for(var k in t)u[k]=t[k];
 if(caps[t.id]!==undefined)u.c=caps[t.id];return u;});}
function view(r,m){var p=r.m[m],v={n:r.n,tops:captioned(r.tops,p.caps),crops:captioned(r.crops,p.caps),method:m,row:r};
 for(var k in p)if(k!=='caps')v[k]=p[k];return v;}
// A layer's status counts, label chips and histograms are those of the method the page shows.
function useLayers(m){I.layers.forEach(function(L){var E=L.by[m];L.status=E.status;L.labels=E.labels;L.faithfulness=E.faithfulness||null;});}
useLayers(M[0]);
var plainLayer=window.DND_LAYER;
window.DND_LAYER=function(k,rows){raw[k]=rows;plainLayer(k,rows.map(function(r){return view(r,state.method);}));};
function named(p){return p.label!==null?p.label:'('+(p.status==='ok'?'no label':p.status)+')';}
// Each card's switcher has a button per method showing that method's label, so agreement is seen
// without a click; clicking one shows that method's part on this card.
var plainCard=card;
card=function(layer,v){var c=plainCard(layer,v),s=el('div',{'class':'switch',role:'group','aria-label':'method'});
 c.setAttribute('data-method',v.method);
 M.forEach(function(m){var b=el('button',{type:'button','data-method':m,'class':m===v.method?'on':'','aria-pressed':String(m===v.method)},
   m+': '+named(v.row.m[m]));
  b.addEventListener('click',function(){c.replaceWith(card(layer,view(v.row,m)));});s.appendChild(b);});
 c.insertBefore(s,c.children[1]);return c;};
function useMethod(m){state.method=m;useLayers(m);for(var k in raw)loaded[k]=raw[k].map(function(r){return view(r,m);});
 if(state.layer!==null)show(state.layer);}
document.addEventListener('DOMContentLoaded',function(){var s=document.getElementById('method');
 s.addEventListener('change',function(){useMethod(s.value);});});
"""


def comparison_script() -> str:
    """SCRIPT with COMPARE_SCRIPT inside its closure, just before the closure ends."""
    end = SCRIPT.rindex("})();")
    return SCRIPT[:end] + COMPARE_SCRIPT.lstrip("\n") + SCRIPT[end:]


def _figure(value: Any, digits: str = ".3f") -> str:
    """A summary number as the header shows it ("d": a count); "-" where _COMPARE has null."""
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    return str(int(value)) if digits == "d" else format(float(value), digits)


def per_layer_line(per_layer: Any) -> str:
    """"layer3: corr 0.610 · AUPRC 0.720; fc: ...": a method's mean faithfulness per layer."""
    from dnd.faithfulness.metrics import METRICS
    from dnd.report.data import FAITHFULNESS_NAMES

    if not isinstance(per_layer, dict):
        return "-"
    lines = []
    for layer, values in per_layer.items():
        if not isinstance(values, dict):
            continue
        names = [m for m in METRICS if m in values] + [m for m in values if m not in METRICS]
        lines.append(f"{layer}: " + " \u00b7 ".join(f"{FAITHFULNESS_NAMES.get(m, m)} {_figure(values[m])}" for m in names))
    return "; ".join(lines) or "-"


def methods_table(compare: dict[str, Any] | None) -> str:
    """The header's table of a comparison: per method, _COMPARE's summary, its run and method line."""
    from html import escape

    if not compare:
        return ""
    rows = ["<tr><th>method</th><th>neurons</th><th>ok</th><th>s / neuron</th>"
            "<th>mean faithfulness per layer</th><th>run</th></tr>"]
    for method in compare["methods"]:
        summary = compare["summary"].get(method) or {}
        note = compare["notes"].get(method)
        run = escape(compare["lines"].get(method) or "") + "<br>" + escape(str(compare["runs"].get(method) or "-"))
        if note:
            run += f'<br><span class="note">{escape(note)}</span>'
        rows.append(f'<tr data-method="{escape(method)}"><th>{escape(method)}</th>'
                    f'<td>{_figure(summary.get("neurons"), "d")}</td><td>{_figure(summary.get("ok"), "d")}</td>'
                    f'<td>{_figure(summary.get("seconds_per_neuron"), ".3g")}</td>'
                    f"<td>{escape(per_layer_line(summary.get('per_layer')))}</td><td>{run}</td></tr>")
    return '<table class="methods">' + "".join(rows) + "</table>"


def method_control(compare: dict[str, Any] | None) -> str:
    """The comparison's page-wide method control; empty for one run's report."""
    from html import escape

    if not compare:
        return ""
    options = "".join(f'<option value="{escape(m)}">{escape(m)}</option>' for m in compare["methods"])
    return ('<div id="method-control"><label>show every card as <select id="method">' + options + "</select></label> "
            '<span class="note">search, sort and the minimum filter read the method selected here; '
            "a card's own buttons switch that card alone</span></div>\n")


def score_controls(faithfulness: dict[str, Any] | None) -> str:
    """The layer view's faithfulness controls (sort, minimum filter) and the place of its
    histograms; empty for a run that was not scored, so such a page shows nothing of it."""
    from html import escape

    if not faithfulness or not faithfulness.get("metrics"):
        return ""
    names = faithfulness["names"]
    options = "".join(f'<option value="{escape(m)}">{escape(names.get(m, m))}</option>' for m in faithfulness["metrics"])
    return (
        '<div id="faithfulness"></div>\n<div id="score-controls">'
        f'<label>sort by <select id="sort"><option value="">neuron index</option>{options}</select></label>'
        f'<label>only labels with <select id="min-metric">{options}</select> at least '
        '<input id="min-score" type="number" step="0.05" placeholder="any" aria-label="minimum faithfulness"></label>'
        "</div>\n"
    )


def page(title: str, run_uri: str, method: str = "", faithfulness: dict[str, Any] | None = None,
         compare: dict[str, Any] | None = None) -> str:
    """The report's single page; ``method`` is the line saying which method the run used,
    ``faithfulness`` the index's faithfulness entry (None for a run not scored) and ``compare`` the
    index's comparison entry (None for one run's report)."""
    from html import escape

    style, script = (STYLE, SCRIPT) if compare is None else (STYLE + COMPARE_STYLE, comparison_script())
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>
<link rel="icon" href="data:,"><meta name="viewport" content="width=device-width, initial-scale=1">
<style>{style}</style>
<script src="data/index.js"></script>
<script>{script}</script>
</head><body>
<header><h1>{escape(title)}</h1><div class="run">{escape(run_uri)}</div><div class="run method">{escape(method)}</div>{methods_table(compare)}</header>
<nav><span>layers:</span></nav>
<main><div id="summary"></div><div id="labels"></div>
{score_controls(faithfulness)}{method_control(compare)}<input id="search" type="search" placeholder="filter by label text" aria-label="filter by label text">
<div id="shown-count"></div><div id="cards"><div id="sentinel"></div></div></main>
</body></html>
"""
